"""Generation engines for evaluation: transformers (default), llama.cpp (GGUF on CPU) and vLLM (GPU).

``load_engine(name, model)`` returns ``(model_or_engine, tokenizer)``; ``recap.generation.generate``
and ``generate_rounds`` accept either. The tokenizer is always the Hugging Face one, and every engine
is given the *token ids* it produces (``tokenizer(prompt_text)``, as TRL tokenizes raw prompts), so all
engines read exactly the same prompts and their outputs can be compared side by side.

* ``hf``: ``transformers`` ``generate``, batched and length-sorted, KV cache carried across IPR rounds.
* ``llamacpp``: ``llama-cpp-python`` (``pip install -e '.[llamacpp]'``; builds from source in about
  six minutes on a 2-core machine) on the GGUF file itself, quantised weights and all. One stream at a
  time; llama.cpp keeps the KV cache of the longest common prefix with the previous request, so IPR
  rounds are run conversation by conversation to reuse it.
* ``vllm``: ``vllm.LLM`` with automatic prefix caching, for GPUs.
* ``auto``: ``vllm`` when the ``vllm`` package and a CUDA device are present, else ``hf``.

Sampling follows ``SamplingConfig`` only (temperature, top-p, max new tokens): the engines' own extra
filters (llama.cpp's top-k 40 and min-p 0.05, repetition penalties) are switched off, so the three
engines sample from the same distribution. Greedy is ``temperature: 0``.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
from collections.abc import Callable, Sequence

from recap.generation import Generation, SamplingConfig

ENGINES = ("auto", "hf", "llamacpp", "vllm")
LLAMACPP_INSTALL = "pip install 'llama-cpp-python>=0.3'"


def vllm_usable() -> bool:
    """The ``vllm`` package is installed and a CUDA device is visible."""
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def resolve_engine(name: str) -> str:
    """``auto`` → ``vllm`` when usable, else ``hf``; other names are checked and returned."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    if name == "auto":
        return "vllm" if vllm_usable() else "hf"
    return name


class LlamaCppEngine:
    """A GGUF model run by llama.cpp, one sequence at a time, with its prefix cache."""

    engine_name = "llamacpp"

    def __init__(self, gguf_path: str, tokenizer, n_ctx: int = 0, n_threads: int | None = None, llama=None):
        if llama is None:
            try:
                from llama_cpp import Llama
            except ImportError as e:
                raise ModuleNotFoundError(f"the llamacpp engine needs llama-cpp-python: {LLAMACPP_INSTALL}") from e
            llama = Llama(model_path=gguf_path, n_ctx=n_ctx, n_threads=n_threads or os.cpu_count(),
                          n_batch=512, verbose=False)
        self.llm = llama
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token_id
        if hasattr(llama, "close"):  # free the model before interpreter teardown (llama.cpp's __del__ fails late)
            atexit.register(llama.close)

    def _one(self, ids: list[int], sampling: SamplingConfig, seed: int) -> Generation:
        self.llm.set_seed(seed)
        if len(ids) + sampling.max_new_tokens > self.llm.n_ctx():
            raise ValueError(f"prompt of {len(ids)} tokens + {sampling.max_new_tokens} new tokens exceeds the "
                             f"llama.cpp context of {self.llm.n_ctx()} tokens")
        new: list[int] = []
        ended = False
        for token in self.llm.generate(ids, temp=sampling.temperature, top_p=sampling.top_p, top_k=0, min_p=0.0,
                                       repeat_penalty=1.0, reset=True):
            if token == self.eos:
                ended = True
                break
            new.append(token)
            if len(new) >= sampling.max_new_tokens:
                break
        return Generation(self.tokenizer.decode(new, skip_special_tokens=True), len(new), not ended, tuple(new))

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig, seed: int = 0,
                 progress: Callable[[int], None] | None = None) -> list[Generation]:
        out = []
        for i, prompt in enumerate(prompts):
            out.append(self._one(self.tokenizer(prompt)["input_ids"], sampling, seed + i))
            if progress:
                progress(1)
        return out

    def generate_rounds(self, prompts, suffix, rounds, sampling, seeds, progress=None):
        """Conversation by conversation, so that each round extends the sequence llama.cpp just read
        (its prefix cache then reads only the new suffix)."""
        from recap.generation import Turn

        out: list[list[Turn]] = [[] for _ in range(rounds + 1)]
        for i, prompt in enumerate(prompts):
            text, ids = prompt, self.tokenizer(prompt)["input_ids"]
            for r in range(rounds + 1):
                if r:
                    prev = out[r - 1][i].generation
                    added = suffix(r, i, prev)
                    text = text + prev.text + added
                    ids = ids + list(prev.ids) + self.tokenizer(added, add_special_tokens=False)["input_ids"]
                out[r].append(Turn(text, self._one(ids, sampling, seeds[r] + i)))
                if progress:
                    progress(r, 1)
        return out


class VLLMEngine:
    """A model served by ``vllm.LLM`` (GPU), with automatic prefix caching."""

    engine_name = "vllm"

    def __init__(self, model: str, tokenizer, dtype: str = "auto", gpu_memory_utilization: float = 0.85,
                 max_model_len: int | None = None, llm=None):
        if llm is None:
            try:
                from vllm import LLM
            except ImportError as e:
                raise ModuleNotFoundError("the vllm engine needs vLLM and a GPU: pip install vllm") from e
            llm = LLM(model=model, tokenizer=model, dtype=dtype, enable_prefix_caching=True,
                      gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len)
        self.llm = llm
        self.tokenizer = tokenizer

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig, seed: int = 0,
                 progress: Callable[[int], None] | None = None) -> list[Generation]:
        from vllm import SamplingParams

        params = SamplingParams(n=1, temperature=sampling.temperature, top_p=sampling.top_p, top_k=-1,
                                max_tokens=sampling.max_new_tokens, seed=seed, skip_special_tokens=True)
        requests = [{"prompt_token_ids": self.tokenizer(p)["input_ids"]} for p in prompts]
        results = self.llm.generate(requests, params, use_tqdm=False)
        out = []
        for res in results:
            c = res.outputs[0]
            ids = list(c.token_ids)
            if ids and ids[-1] == self.tokenizer.eos_token_id:
                ids = ids[:-1]
            out.append(Generation(self.tokenizer.decode(ids, skip_special_tokens=True), len(ids),
                                  c.finish_reason == "length", tuple(ids)))
        if progress:
            progress(len(prompts))
        return out


def resolve_dtype(dtype: str) -> str:
    """``auto`` → bfloat16 on a CUDA GPU (the precision reasoning models are trained and served in),
    float32 on CPU (where bf16 changed most greedy outputs of SmolLM2-135M; see docs/performance.md)."""
    if dtype != "auto":
        return dtype
    import torch

    return "bfloat16" if torch.cuda.is_available() else "float32"


def load_engine(name: str, model: str, *, dtype: str = "auto", num_threads: int = 0, n_ctx: int = 0,
                trust_remote_code: bool = False, allow_pickle: bool = False):
    """``(model_or_engine, tokenizer)`` for ``recap.generation.generate``. ``model`` as for
    ``recap.models.load_model`` (the llama.cpp engine needs a GGUF file or ``smollm2-135m``)."""
    from recap.models import load_model, load_tokenizer, resolve_model

    engine = resolve_engine(name)
    dtype = resolve_dtype(dtype)
    if engine == "hf":
        return load_model(model, dtype=dtype, device="auto", trust_remote_code=trust_remote_code,
                          allow_pickle=allow_pickle)
    tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
    if engine == "llamacpp":
        where, gguf = resolve_model(model)
        if gguf is None:
            raise ValueError(f"the llamacpp engine runs GGUF files; {model!r} is not one (give a .gguf path)")
        return LlamaCppEngine(os.path.join(where, gguf), tokenizer, n_ctx=n_ctx, n_threads=num_threads or None), tokenizer
    return VLLMEngine(resolve_model(model)[0], tokenizer, dtype="auto" if dtype == "float32" else dtype), tokenizer
