"""OpenAI-compatible endpoints (vLLM ``serve``, SGLang, llama.cpp's server, TGI, a provider): one client per
endpoint, and one-line errors.

``Endpoint`` builds the ``openai`` client lazily: the API key is read from the environment variable it is
given (never from a config, a cache or a log); without a key only loopback servers are allowed. Each
request has a timeout; connection errors, timeouts, 429 and 5xx are retried with exponential backoff by
the client (``max_retries``); a reply whose body is not JSON is retried as often here. ``Endpoint.call`` turns what is left into an ``EndpointError`` of one line
that names the endpoint and never shows the key. The ``endpoint`` generation engine (``recap.inference.engines``)
goes through it; with ``what="judge endpoint", error=RubricError`` it gives the rubric judges' own messages.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class EndpointError(ValueError):
    """An OpenAI-compatible endpoint could not be used (the message is one line, the key redacted)."""


def redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _one_line(text: str, secret: str | None, limit: int = 300) -> str:
    return " ".join(redact(text, secret).split())[:limit]


class Endpoint:
    """The ``openai`` client of one endpoint. ``what`` names it in errors (e.g. "judge endpoint")."""

    def __init__(
        self,
        base_url: str,
        api_key_env: str,
        timeout_s: float,
        max_retries: int,
        what: str = "endpoint",
        error: type[ValueError] = EndpointError,
        client=None,
    ):
        self.base_url, self.api_key_env = base_url, api_key_env
        self.timeout_s, self.max_retries, self.what, self.error = timeout_s, max_retries, what, error
        self._client = client
        self.secret: str | None = None
        # per thread, the tokens the server says the last reply decoded (usage.completion_tokens; None: unsaid)
        self.usage = threading.local()

    def client(self):
        if self._client is None:
            try:
                from openai import OpenAI
            except ImportError as e:  # pragma: no cover - depends on the environment
                raise ModuleNotFoundError(f"the {self.what} needs the 'openai' client: pip install openai") from e
            key = os.environ.get(self.api_key_env)
            if not key:
                host = urlparse(self.base_url).hostname or ""
                if host not in LOOPBACK:
                    raise self.error(
                        f"{self.what} {self.base_url}: set the API key in the environment "
                        f"variable {self.api_key_env} (it is never read from a config)"
                    )
                key = "no-key"  # local servers ignore it
            else:
                self.secret = key
            self._client = OpenAI(
                base_url=self.base_url, api_key=key, timeout=self.timeout_s, max_retries=self.max_retries
            )
        return self._client

    def call(self, request: Callable[[Any], Any]):
        """``request(client)``; what the client's retries could not fix becomes one ``self.error`` line. The
        reply's ``usage.completion_tokens`` is kept for the calling thread in ``usage.completion_tokens``."""
        import openai

        attempts = self.max_retries + 1
        self.usage.completion_tokens = None
        try:
            for attempt in range(attempts):
                try:
                    resp = request(self.client())
                    self.usage.completion_tokens = getattr(getattr(resp, "usage", None), "completion_tokens", None)
                    return resp
                except json.JSONDecodeError as e:  # a 200 whose body is not JSON (a proxy's page, a cut reply)
                    if attempt + 1 < attempts:
                        time.sleep(min(8.0, 0.5 * 2**attempt))  # the client's own backoff does not cover it
                        continue
                    raise self.error(
                        f"{self.what} {self.base_url} answered with a body that is not JSON after {attempts} "
                        f"attempts ({e.msg} at character {e.pos}; it starts {_one_line(e.doc[:80], self.secret)!r})"
                    ) from None
        except openai.APITimeoutError:
            raise self.error(
                f"{self.what} {self.base_url} timed out after {self.timeout_s:g} s ({attempts} attempts)"
            ) from None
        except openai.APIConnectionError as e:
            cause = _one_line(str(e.__cause__ or e), self.secret)
            raise self.error(
                f"cannot reach the {self.what} {self.base_url} after {attempts} attempts ({cause}); "
                "is the server running?"
            ) from None
        except openai.APIStatusError as e:
            raise self.error(
                f"{self.what} {self.base_url} answered HTTP {e.status_code}: {_one_line(str(e.message), self.secret)}"
            ) from None
