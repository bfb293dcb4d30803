"""Generation engines for evaluation: transformers (default), llama.cpp (GGUF on CPU), vLLM (GPU), and a
model served behind an OpenAI-compatible API.

``load_engine(name, model)`` returns ``(model_or_engine, tokenizer)``; ``recap.inference.generation.generate``
and ``generate_rounds`` accept either. The tokenizer is always the Hugging Face one, and every local
engine is given the *token ids* it produces (``tokenizer(prompt_text)``, as TRL tokenizes raw prompts), so
all engines read exactly the same prompts and their outputs can be compared side by side.

* ``hf``: ``transformers`` ``generate``, batched and length-sorted, KV cache carried across IPR rounds.
* ``llamacpp``: ``llama-cpp-python`` (``pip install -e '.[llamacpp]'``; builds from source in about
  six minutes on a 2-core machine) on the GGUF file itself, quantised weights and all. One stream at a
  time; llama.cpp keeps the KV cache of the longest common prefix with the previous request, so IPR
  rounds are run conversation by conversation to reuse it.
* ``vllm``: ``vllm.LLM`` with automatic prefix caching, for GPUs.
* ``endpoint``: a model served by someone else (vLLM ``serve``, SGLang, llama.cpp's server, TGI, a
  provider; ``EndpointConfig``). The prompt is rendered *here* with the model's own chat template and sent
  to the completions API as raw text (or token ids), so the prefill sits inside the think block exactly as
  with the local engines. Where a server offers only chat completions, the prompt is split back into the
  conversation and sent with ``continue_final_message`` (vLLM, SGLang), after checking that the template
  renders it back to exactly the same text. ``max_concurrency`` requests in flight, each with a timeout
  and retries (``recap.inference.endpoint``); token counts from the server's usage fields; ``engine.route`` and
  ``engine.metadata`` say how the prompts were sent.
* ``auto``: ``vllm`` when the ``vllm`` package and a CUDA device are present, else ``hf``.

Sampling follows ``SamplingConfig`` only (temperature, top-p, max new tokens): the engines' own extra
filters (llama.cpp's top-k 40 and min-p 0.05, repetition penalties) are switched off, so the engines
sample from the same distribution (on a server, as far as its API lets a request do so). Greedy is
``temperature: 0``.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from recap.inference.chat import THINK_CLOSE, render_prompt
from recap.inference.endpoint import Endpoint, EndpointError
from recap.inference.generation import Generation, SamplingConfig

ENGINES = ("auto", "hf", "llamacpp", "vllm", "endpoint")
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
            # Prompt reading uses the same thread count: llama.cpp's default (all cores) makes a busy machine's
            # OpenMP threads wait on each other (4 short answers: 9.8 s instead of 2.6 s on 1 thread).
            threads = n_threads or os.cpu_count()
            llama = Llama(
                model_path=gguf_path,
                n_ctx=n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                n_batch=512,
                verbose=False,
            )
        self.llm = llama
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token_id
        if hasattr(llama, "close"):  # free the model before interpreter teardown (llama.cpp's __del__ fails late)
            atexit.register(llama.close)

    def _one(self, ids: list[int], sampling: SamplingConfig, seed: int) -> Generation:
        self.llm.set_seed(seed)
        if len(ids) + sampling.max_new_tokens > self.llm.n_ctx():
            raise ValueError(
                f"prompt of {len(ids)} tokens + {sampling.max_new_tokens} new tokens exceeds the "
                f"llama.cpp context of {self.llm.n_ctx()} tokens"
            )
        new: list[int] = []
        ended = False
        for token in self.llm.generate(
            ids, temp=sampling.temperature, top_p=sampling.top_p, top_k=0, min_p=0.0, repeat_penalty=1.0, reset=True
        ):
            if token == self.eos:
                ended = True
                break
            new.append(token)
            if len(new) >= sampling.max_new_tokens:
                break
        return Generation(self.tokenizer.decode(new, skip_special_tokens=True), len(new), not ended, tuple(new))

    def generate(
        self,
        prompts: Sequence[str],
        sampling: SamplingConfig,
        seed: int = 0,
        progress: Callable[[int], None] | None = None,
    ) -> list[Generation]:
        out = []
        for i, prompt in enumerate(prompts):
            out.append(self._one(self.tokenizer(prompt)["input_ids"], sampling, seed + i))
            if progress:
                progress(1)
        return out

    def generate_rounds(self, prompts, next_turn, rounds, sampling, seeds, progress=None):
        """Conversation by conversation, so that each round extends the sequence llama.cpp just read
        (its prefix cache then reads only the new suffix). The conversation grows by token concatenation
        as in ``recap.inference.generation.generate_rounds``: the ids of the kept part of the previous generation,
        then the ids of the appended text."""
        from recap.inference.generation import Turn, kept_tokens

        out: list[list[Turn]] = [[] for _ in range(rounds + 1)]
        for i, prompt in enumerate(prompts):
            text, ids = prompt, self.tokenizer(prompt)["input_ids"]
            for r in range(rounds + 1):
                if r:
                    prev = out[r - 1][i].generation
                    n_chars, appended = next_turn(r, i, prev)
                    n_ids, leftover = kept_tokens(self.tokenizer, prev, n_chars)
                    text = text + prev.text[:n_chars] + appended
                    ids = (
                        ids
                        + list(prev.ids[:n_ids])
                        + self.tokenizer(leftover + appended, add_special_tokens=False)["input_ids"]
                    )
                out[r].append(Turn(text, self._one(ids, sampling, seeds[r] + i)))
                if progress:
                    progress(r, 1)
        return out


class VLLMEngine:
    """A model served by ``vllm.LLM`` (GPU), with automatic prefix caching."""

    engine_name = "vllm"

    def __init__(
        self,
        model: str,
        tokenizer,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        llm=None,
    ):
        if llm is None:
            try:
                from vllm import LLM
            except ImportError as e:
                raise ModuleNotFoundError("the vllm engine needs vLLM and a GPU: pip install vllm") from e
            llm = LLM(
                model=model,
                tokenizer=model,
                dtype=dtype,
                enable_prefix_caching=True,
                gpu_memory_utilization=gpu_memory_utilization,
                max_model_len=max_model_len,
            )
        self.llm = llm
        self.tokenizer = tokenizer

    def generate(
        self,
        prompts: Sequence[str],
        sampling: SamplingConfig,
        seed: int = 0,
        progress: Callable[[int], None] | None = None,
    ) -> list[Generation]:
        from vllm import SamplingParams

        params = SamplingParams(
            n=1,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=-1,
            max_tokens=sampling.max_new_tokens,
            seed=seed,
            skip_special_tokens=True,
        )
        requests = [{"prompt_token_ids": self.tokenizer(p)["input_ids"]} for p in prompts]
        results = self.llm.generate(requests, params, use_tqdm=False)
        out = []
        for res in results:
            c = res.outputs[0]
            ids = list(c.token_ids)
            if ids and ids[-1] == self.tokenizer.eos_token_id:
                ids = ids[:-1]
            out.append(
                Generation(
                    self.tokenizer.decode(ids, skip_special_tokens=True),
                    len(ids),
                    c.finish_reason == "length",
                    tuple(ids),
                )
            )
        if progress:
            progress(len(prompts))
        return out


ROUTES = ("auto", "completions", "chat")
# Request fields that switch a server's own sampling filters off (top-k, min-p, repetition penalty), so
# that only temperature and top-p act, as in the local engines. "other" (OpenAI, TGI, hosted providers)
# gets none: such APIs reject unknown fields, and their defaults filter nothing.
NEUTRAL_SAMPLING = {
    "vllm": {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0},
    "sglang": {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0},
    "llamacpp": {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0},
    "other": {},
}
SERVERS = ("auto", *NEUTRAL_SAMPLING)
# The ``owned_by`` of a model card in /v1/models → the server family ("me": llama-cpp-python's server).
_OWNERS = {"vllm": "vllm", "sglang": "sglang", "llamacpp": "llamacpp", "me": "llamacpp"}


@dataclass
class EndpointConfig:
    """A model served behind an OpenAI-compatible API (``engine: endpoint``); prompts are rendered here."""

    base_url: str = field(
        default="",
        metadata={
            "help": "API root of the server, e.g. http://127.0.0.1:8000/v1 (vLLM serve, SGLang, llama.cpp's server, TGI, a provider). Required by the endpoint engine."
        },
    )
    model: str = field(
        default="",
        metadata={
            "help": "Model name the server serves ('' = the evaluated model's name, which is what vLLM serves a hub id under)."
        },
    )
    tokenizer: str = field(
        default="",
        metadata={
            "help": "Where the tokenizer and chat template come from: a local folder (tokenizer files suffice, no weights), a hub id, a .gguf or smollm2-135m ('' = the evaluated model)."
        },
    )
    chat_template: str = field(
        default="",
        metadata={
            "help": "A Jinja chat template file that replaces the tokenizer's (also sent with chat-route requests)."
        },
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={
            "help": "Environment variable holding the API key (never put the key in a config). Unset is allowed for loopback servers only."
        },
    )
    route: str = field(
        default="auto",
        metadata={
            "help": "completions (the prompt text as rendered here: the prefill sits inside the think block exactly as with local engines), chat (chat completions continuing the final assistant message, vLLM and SGLang; each prompt is checked to render back to the same text) or auto (completions, else chat when the server has no completions API)."
        },
    )
    send_token_ids: bool = field(
        default=False,
        metadata={
            "help": "Send completions prompts as token ids (tokenizer(prompt), exactly what local engines read) instead of text; vLLM, SGLang and llama.cpp's C++ server accept them."
        },
    )
    server: str = field(
        default="auto",
        metadata={
            "help": "Server family, for the request fields that switch its own sampling filters off: vllm, sglang, llamacpp, other (temperature and top-p only) or auto (from the server's /v1/models)."
        },
    )
    extra_body: dict[str, object] = field(
        default_factory=dict,
        metadata={"help": "Extra request fields merged into every request (after the neutral sampling fields)."},
    )
    max_concurrency: int = field(default=8, metadata={"range": "[1, inf)", "help": "Requests in flight at once."})
    timeout_s: float = field(
        default=600.0, metadata={"range": "(0, inf)", "help": "Seconds before one request times out."}
    )
    max_retries: int = field(
        default=3,
        metadata={
            "range": "[0, inf)",
            "help": "Retries of a failed request (connection error, timeout, 429, 5xx), with exponential backoff.",
        },
    )

    def __post_init__(self):
        if self.route not in ROUTES:
            raise ValueError(f"endpoint.route must be one of {', '.join(ROUTES)}, got {self.route!r}")
        if self.server not in SERVERS:
            raise ValueError(f"endpoint.server must be one of {', '.join(SERVERS)}, got {self.server!r}")
        if self.max_concurrency < 1:
            raise ValueError("endpoint.max_concurrency must be ≥ 1")


def endpoint_tokenizer(source: str, chat_template: str = "", trust_remote_code: bool = False):
    """The tokenizer (and chat template) of a served model: from a folder that may hold tokenizer files only,
    a hub id, a GGUF or ``smollm2-135m``; ``chat_template`` (a file) replaces its template."""
    from recap.inference.models import load_tokenizer, prepare_tokenizer

    if Path(source).is_dir():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        prepare_tokenizer(None, tokenizer)
    else:
        tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
    if chat_template:
        tokenizer.chat_template = Path(chat_template).read_text(encoding="utf-8")
    return tokenizer


@dataclass(frozen=True)
class _ChatLayout:
    """How a rendered prompt splits back into messages: ``pattern``'s groups are the contents of ``roles``,
    then the text of the assistant's unfinished turn."""

    roles: tuple[str, ...]
    pattern: re.Pattern


class EndpointEngine:
    """A model behind an OpenAI-compatible server. Prompts rendered here are sent as they are (completions)
    or as a conversation whose assistant turn the server continues (chat), ``max_concurrency`` at a time."""

    engine_name = "endpoint"

    def __init__(self, cfg: EndpointConfig, tokenizer, model: str = "", client=None):
        if not cfg.base_url:
            raise ValueError(
                "the endpoint engine needs the server's address: set endpoint.base_url "
                "(e.g. --base-url http://127.0.0.1:8000/v1)"
            )
        self.cfg, self.tokenizer = cfg, tokenizer
        self.served = cfg.model or model
        if not self.served:
            raise ValueError("the endpoint engine needs the served model's name: set endpoint.model")
        self.api = Endpoint(
            cfg.base_url, cfg.api_key_env, cfg.timeout_s, cfg.max_retries, "model endpoint", client=client
        )
        self.route: str | None = None if cfg.route == "auto" else cfg.route  # decided by the first request
        self.server = cfg.server
        self._layouts: list[_ChatLayout] | None = None
        self._check_model()

    # -- the server ----------------------------------------------------------------------------------
    def _check_model(self) -> None:
        """Ask /v1/models: the model must be served (a server that lists nothing is taken at its word);
        its card gives the server family and, on vLLM, the context length (read by ``check_context``)."""
        import openai

        def listing(client):
            try:
                return list(client.models.list())
            except openai.NotFoundError:
                return None

        cards = self.api.call(listing)
        card = next((c for c in cards or [] if c.id == self.served), None)
        if cards and card is None:
            served = ", ".join(repr(c.id) for c in cards[:10])
            raise EndpointError(
                f"model endpoint {self.cfg.base_url} does not serve {self.served!r} (it serves "
                f"{served}); set endpoint.model to one of them"
            )
        if self.server == "auto":
            self.server = _OWNERS.get(getattr(card, "owned_by", None) or "", "other")
        max_len = (getattr(card, "model_extra", None) or {}).get("max_model_len")
        if isinstance(max_len, int) and max_len > 0:
            # what recap.inference.models.context_length reads
            self.config = SimpleNamespace(max_position_embeddings=max_len)

    @property
    def metadata(self) -> dict:
        """How this engine reached the model (for result records)."""
        return {
            "engine": self.engine_name,
            "route": self.route,
            "base_url": self.cfg.base_url,
            "served_model": self.served,
            "server": self.server,
            "prompt_as": "token_ids" if self.cfg.send_token_ids and self.route == "completions" else "text",
        }

    # -- generation ----------------------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[str],
        sampling: SamplingConfig,
        seed: int = 0,
        progress: Callable[[int], None] | None = None,
    ) -> list[Generation]:
        """One request per prompt, ``max_concurrency`` in flight; prompt i is sampled with seed ``seed + i``
        whatever the order the answers come back in. After a failure nothing more is sent; the requests in
        flight finish and one ``EndpointError`` line is raised."""
        prompts = list(prompts)
        out: list[Generation | None] = [None] * len(prompts)
        first = 0
        if self.route is None and prompts:  # the first request tells whether there is a completions API
            out[0], first = self._detect_route(prompts[0], sampling, seed), 1
            if progress:
                progress(1)
        todo = [(i, self._payload(prompts[i])) for i in reversed(range(first, len(prompts)))]  # tokenizer here
        errors: list[tuple[int, EndpointError]] = []
        with ThreadPoolExecutor(max_workers=self.cfg.max_concurrency) as pool:
            running: dict = {}
            while True:
                while todo and not errors and len(running) < self.cfg.max_concurrency:
                    i, payload = todo.pop()
                    running[pool.submit(self._send, payload, sampling, seed + i)] = i
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = running.pop(fut)
                    try:
                        out[i] = fut.result()
                    except EndpointError as e:  # start nothing more; let what runs finish
                        errors.append((i, e))
                        continue
                    if progress:
                        progress(1)
        if errors:
            i, e = min(errors, key=lambda x: x[0])
            answered = sum(g is not None for g in out)
            raise EndpointError(
                f"{e} [prompt {i} of {len(prompts)}; {answered} answered, {len(prompts) - answered} not]"
            )
        return out  # type: ignore[return-value]

    def _detect_route(self, prompt: str, sampling: SamplingConfig, seed: int) -> Generation:
        import openai

        def probe(client):
            try:
                return client.completions.create(prompt=self._prompt_field(prompt), **self._kwargs(sampling, seed))
            except openai.NotFoundError:
                return None

        response = self.api.call(probe)
        if response is not None:
            self.route = "completions"
            return self._read(response)
        self.route = "chat"
        return self._send(self._payload(prompt), sampling, seed)

    def _prompt_field(self, prompt: str):
        return self.tokenizer(prompt)["input_ids"] if self.cfg.send_token_ids else prompt

    def _payload(self, prompt: str):
        return self._prompt_field(prompt) if self.route == "completions" else self._chat_messages(prompt)

    def _kwargs(self, sampling: SamplingConfig, seed: int) -> dict:
        return dict(
            model=self.served,
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=seed,
            extra_body={**NEUTRAL_SAMPLING[self.server], **self.cfg.extra_body},
        )

    def _send(self, payload, sampling: SamplingConfig, seed: int) -> Generation:
        kw = self._kwargs(sampling, seed)
        if self.route == "completions":
            return self._read(self.api.call(lambda c: c.completions.create(prompt=payload, **kw)))
        kw["extra_body"].update(
            continue_final_message=True, add_generation_prompt=False, chat_template_kwargs={"enable_thinking": True}
        )
        if self.cfg.chat_template:
            kw["extra_body"]["chat_template"] = self.tokenizer.chat_template
        return self._read(self.api.call(lambda c: c.chat.completions.create(messages=payload, **kw)))

    def _read(self, response) -> Generation:
        choices = getattr(response, "choices", None)
        if not choices:
            raise EndpointError(f"model endpoint {self.cfg.base_url} returned no choices")
        choice = choices[0]
        if self.route == "completions":
            text = choice.text or ""
        else:
            # A server with a reasoning parser returns the reasoning apart: put the text back together.
            message = choice.message
            extra = getattr(message, "model_extra", None) or {}
            reasoning = extra.get("reasoning_content") or extra.get("reasoning")
            text = message.content or ""
            if reasoning:
                text = reasoning + (THINK_CLOSE + text if message.content is not None else "")
        usage = getattr(response, "usage", None)
        n = (
            usage.completion_tokens
            if usage is not None and usage.completion_tokens is not None
            else len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        )
        return Generation(text, n, choice.finish_reason == "length", ())

    # -- the chat route ------------------------------------------------------------------------------
    def _render_continued(self, messages: list[dict]) -> str:
        """``messages`` rendered as the server renders them with continue_final_message (BOS as in
        ``recap.inference.chat.render_prompt``)."""
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, continue_final_message=True, add_generation_prompt=False, enable_thinking=True
        )
        bos = getattr(self.tokenizer, "bos_token", None)
        if bos and text.startswith(bos) and self.tokenizer("x")["input_ids"][:1] == [self.tokenizer.bos_token_id]:
            text = text[len(bos) :]
        return text

    def _chat_layouts(self) -> list[_ChatLayout]:
        """Learn, from conversations with marker contents, where the template puts each message and where the
        assistant's own text starts (the generation prompt may already open the think block)."""
        if self._layouts is None:
            self._layouts = []
            for roles in (("user",), ("system", "user")):
                marks = [f"\ue000{k}\ue001" for k in range(len(roles) + 1)]  # one per message, one for the prefill
                messages = [{"role": r, "content": m} for r, m in zip(roles, marks)]
                probe = render_prompt(self.tokenizer, messages, marks[-1])
                pieces = re.split("\ue000\\d\ue001", probe)
                if len(pieces) != len(roles) + 2 or pieces[-1]:
                    continue
                tail = pieces[-2]  # from the last message to the prefill: generation prompt, think tag, separator
                for k in range(len(tail) + 1):  # the shortest assistant header that renders back exactly
                    turn = {"role": "assistant", "content": tail[k:] + marks[-1]}
                    try:
                        if self._render_continued([*messages, turn]) == probe:
                            break
                    except Exception:  # noqa: BLE001 - a template that cannot continue this split
                        continue
                else:
                    continue
                body = "(.*?)".join(re.escape(p) for p in pieces[:-2])
                self._layouts.append(_ChatLayout(roles, re.compile(f"{body}(.*?){re.escape(tail[:k])}(.*)", re.DOTALL)))
        return self._layouts

    def _chat_messages(self, prompt: str) -> list[dict]:
        """The conversation ``prompt`` was rendered from, its last message the assistant's unfinished turn,
        checked to render back to exactly ``prompt``."""
        for layout in self._chat_layouts():
            match = layout.pattern.fullmatch(prompt)
            if match is None:
                continue
            *contents, assistant = match.groups()
            messages = [{"role": r, "content": c} for r, c in zip(layout.roles, contents)]
            messages.append({"role": "assistant", "content": assistant})
            try:
                if self._render_continued(messages) == prompt:
                    return messages
            except ValueError:  # transformers: the template deletes part of the final message
                continue
        source = getattr(self.tokenizer, "name_or_path", "") or "the model"
        raise EndpointError(
            f"the chat route cannot send this prompt exactly: the chat template of {source} does not "
            "render it back from a conversation whose assistant turn is continued (e.g. it drops "
            "the reasoning of assistant messages); use a server with the completions API "
            "(endpoint.route: completions)"
        )


def resolve_dtype(dtype: str) -> str:
    """``auto`` → bfloat16 on a CUDA GPU (the precision reasoning models are trained and served in),
    float32 on CPU (where bf16 changed most greedy outputs of SmolLM2-135M; see docs/performance.md)."""
    if dtype != "auto":
        return dtype
    import torch

    return "bfloat16" if torch.cuda.is_available() else "float32"


def check_engine_model(
    name: str,
    model: str,
    *,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    endpoint: EndpointConfig | None = None,
) -> None:
    """Raise, in seconds and without reading weights, the error ``load_engine`` with these arguments would
    raise because a model, tokenizer or chat template it names is not there (``models.check_model``)."""
    from recap.inference.models import check_model, resolve_model

    engine = resolve_engine(name)
    if engine == "endpoint":
        cfg = endpoint or EndpointConfig()
        source = cfg.tokenizer or model
        if not Path(source).is_dir():  # a folder may hold tokenizer files only
            check_model(source, trust_remote_code=trust_remote_code)
        if cfg.chat_template and not Path(cfg.chat_template).is_file():
            raise FileNotFoundError(f"endpoint.chat_template: no such file: {cfg.chat_template}")
        return
    check_model(model, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle and engine == "hf")
    if engine == "llamacpp" and resolve_model(model)[1] is None:
        raise ValueError(f"the llamacpp engine runs GGUF files; {model!r} is not one (give a .gguf path)")


def load_engine(
    name: str,
    model: str,
    *,
    dtype: str = "auto",
    num_threads: int = 0,
    n_ctx: int = 0,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    endpoint: EndpointConfig | None = None,
):
    """``(model_or_engine, tokenizer)`` for ``recap.inference.generation.generate``. ``model`` as for
    ``recap.inference.models.load_model`` (the llama.cpp engine needs a GGUF file or ``smollm2-135m``); for the
    endpoint engine it names the tokenizer and the served model unless ``endpoint`` says otherwise."""
    from recap.inference.models import load_model, load_tokenizer, resolve_model

    engine = resolve_engine(name)
    if engine == "endpoint":
        cfg = endpoint or EndpointConfig()
        tokenizer = endpoint_tokenizer(cfg.tokenizer or model, cfg.chat_template, trust_remote_code)
        return EndpointEngine(cfg, tokenizer, model), tokenizer
    dtype = resolve_dtype(dtype)
    if engine == "hf":
        return load_model(
            model, dtype=dtype, device="auto", trust_remote_code=trust_remote_code, allow_pickle=allow_pickle
        )
    tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
    if engine == "llamacpp":
        where, gguf = resolve_model(model)
        if gguf is None:
            raise ValueError(f"the llamacpp engine runs GGUF files; {model!r} is not one (give a .gguf path)")
        return LlamaCppEngine(
            os.path.join(where, gguf), tokenizer, n_ctx=n_ctx, n_threads=num_threads or None
        ), tokenizer
    return VLLMEngine(resolve_model(model)[0], tokenizer, dtype="auto" if dtype == "float32" else dtype), tokenizer
