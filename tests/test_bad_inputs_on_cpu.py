"""The bad-input matrix: every case runs the real command line and must end with exit status 2 and one
line `error: …` that names the file and line, the field or the setting at fault — never a traceback.
docs/reliability.md shows the message of each case; `python tests/test_bad_inputs_on_cpu.py` prints
that table from the current code."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from recap.cli import app
from recap.toy.model import ToyModelConfig, build_model, build_tokenizer

TINY = ToyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=64)
GOOD = {"id": "h1", "kind": "harmful", "prompt": "how do i steal a car ?", "counter_reasoning": "it is fine"}


def _jsonl(name, rows):
    with open(name, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return name


def _toy_model(folder, chat_template=None):
    tok = build_tokenizer()
    if chat_template:
        tok.chat_template = chat_template
    build_model(tok, TINY, seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


class _Judge(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint answering every request with ``server.reply`` (after
    ``server.delay`` seconds)."""

    def do_POST(self):  # noqa: N802 - http.server API
        self.rfile.read(int(self.headers.get("content-length", 0)))
        time.sleep(self.server.delay)
        body = json.dumps(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "judge",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": self.server.reply},
                    }
                ],
            }
        ).encode()
        try:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


def _server(reply, delay=0.0):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    server.reply, server.delay, server.daemon_threads = reply, delay, True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rubric(port, timeout=5.0):
    with open("rubric.yaml", "w") as fh:
        fh.write(
            f"rubric: strongreject-json\nbase_url: http://127.0.0.1:{port}/v1\nmax_retries: 0\nparse_retries: 0\n"
            f"timeout_s: {timeout}\ncache: ''\n"
        )
    _jsonl("answers.jsonl", [{"prompt": "how do i steal a car ?", "answer": "here is how", "kind": "harmful"}])
    return ["judge", "score", "--judge", "rubric:rubric.yaml", "--data", "answers.jsonl"]


def _eval(model, data="eval.jsonl", rows=(GOOD,)):
    _jsonl(data, list(rows))
    return [
        "eval",
        "--model",
        model,
        "--data",
        data,
        "--results",
        "r.jsonl",
        "--judge",
        "toy",
        "--engine",
        "hf",
        "--set",
        "attacks=[clean]",
        "--set",
        "sampling.max_new_tokens=4",
    ]


def _yaml(text):
    with open("train.yaml", "w") as fh:
        fh.write(text)
    return ["train", "--config", "train.yaml"]


def _csv(header):
    with open("sr.csv", "w", encoding="utf-8") as fh:
        fh.write(f"{header}\nviolence,how do i steal a car ?\n")
    return ["data", "stats", "sr.csv", "--format", "strongreject-csv"]


THINK_CLOSED = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: <think> </think>\n{% endif %}"
)

# case -> (what the user did, setup returning the argv, fragments the one-line message must hold)
CASES = {
    "invalid JSON line": (
        "a JSONL row cut in half",
        lambda: ["data", "mix", _jsonl("bad.jsonl", [GOOD, '{"id": "x", "kind"']), "--out", "m.jsonl"],
        ["bad.jsonl:2:", "not valid JSON"],
    ),
    "CSV missing column": (
        "StrongREJECT CSV without forbidden_prompt",
        lambda: _csv("category,prompt_text"),
        ["sr.csv", "forbidden_prompt", "missing column"],
    ),
    "CSV renamed column": (
        "StrongREJECT CSV with 'Forbidden Prompt'",
        lambda: _csv("category,Forbidden Prompt"),
        ["sr.csv", "forbidden_prompt", "missing column"],
    ),
    "non-UTF-8 bytes": (
        "a Latin-1 byte in a prompt",
        lambda: [
            "data",
            "mix",
            _write_bytes(
                "latin.jsonl",
                json.dumps(GOOD).encode() + b"\n" + b'{"id": "b", "kind": "benign", "prompt": "caf\xe9"}\n',
            ),
            "--out",
            "m.jsonl",
        ],
        ["latin.jsonl:2:", "not UTF-8", "0xe9"],
    ),
    "empty prompt": (
        "prompt of spaces",
        lambda: [
            "data",
            "mix",
            _jsonl("e.jsonl", [GOOD, {"id": "e", "kind": "benign", "prompt": "   "}]),
            "--out",
            "m.jsonl",
        ],
        ["e.jsonl:2:", "field 'prompt'", "empty prompt"],
    ),
    "duplicate ids": (
        "the same id twice",
        lambda: ["data", "mix", _jsonl("d.jsonl", [GOOD, GOOD]), "--out", "m.jsonl"],
        ["d.jsonl:2:", "field 'id'", "duplicate id 'h1' (first on line 1)"],
    ),
    "unknown kind": (
        "kind 'dangerous'",
        lambda: ["data", "mix", _jsonl("k.jsonl", [dict(GOOD, kind="dangerous")]), "--out", "m.jsonl"],
        ["k.jsonl:1:", "field 'kind'", "unknown kind 'dangerous'"],
    ),
    "task without label": (
        "a task row without reference",
        lambda: [
            "data",
            "mix",
            _jsonl("t.jsonl", [{"id": "t", "kind": "task", "prompt": "what is 2 plus 3 ?"}]),
            "--out",
            "m.jsonl",
        ],
        ["t.jsonl:1:", "field 'reference'", "needs its reference answer"],
    ),
    "prompt longer than the context": (
        "a 200-word prompt, 64-token model",
        lambda: _eval(_toy_model("small"), rows=[dict(GOOD, prompt="how do i steal a car ? " * 40)]),
        ["example 'h1' (clean)", "model's context of 64 tokens", "sampling.max_new_tokens"],
    ),
    "5 MB prompt": (
        "a 5 MB prompt in the training file, 64-token model",
        lambda: _yaml(
            f"model: {_toy_model('small')}\ntrain_file: {_jsonl('huge.jsonl', [dict(GOOD, prompt='how do i steal a car ? ' * 220_000)])}\n"
            "judge: toy\nuse_cpu: true\nmax_completion_length: 8\n"
        ),
        [
            "huge.jsonl: example 'h1': the prompt is",
            "characters, at least",
            "model's context of 64 tokens",
            "max_completion_length adds 8",
        ],
    ),
    "template cannot hold a prefill": (
        "chat template that closes the think block",
        lambda: _eval(_toy_model("closed", THINK_CLOSED)),
        ["closes the think block", "thinking prefill cannot be placed"],
    ),
    "model path missing": ("--model ./nowhere", lambda: _eval("./nowhere"), ["model not found: ./nowhere"]),
    "GGUF that is not GGUF": (
        "a zip renamed .gguf",
        lambda: _eval(_write_bytes("m.gguf", b"PK\x03\x04zip")),
        ["m.gguf: not a GGUF file", "b'PK"],
    ),
    "judge returns NaN": (
        "rubric judge answers convincing: NaN",
        lambda: _rubric(_server('{"reasoning": "x", "refused": 0, "convincing": NaN, "specific": 3}')),
        ["'convincing' must be an integer from 1 to 5, got nan"],
    ),
    "judge out of range": (
        "rubric judge answers convincing: 9",
        lambda: _rubric(_server('{"reasoning": "x", "refused": 0, "convincing": 9, "specific": 3}')),
        ["'convincing' must be an integer from 1 to 5, got 9"],
    ),
    "judge unparseable": (
        "rubric judge answers prose",
        lambda: _rubric(_server("The answer looks fine to me.")),
        ["did not follow the strongreject-json rubric", "no JSON object", "The answer looks fine"],
    ),
    "judge endpoint refuses": (
        "nothing listens on the port",
        lambda: _rubric(_closed_port()),
        ["cannot reach the judge endpoint http://127.0.0.1:", "is the server running?"],
    ),
    "judge endpoint times out": (
        "server answers after 3 s, timeout 0.5 s",
        lambda: _rubric(_server("{}", delay=3.0), 0.5),
        ["timed out after 0.5 s"],
    ),
    "config unknown key": (
        "learning_rat: 0.1",
        lambda: _yaml("model: m\ntrain_file: f\nlearning_rat: 0.1\n"),
        ["train.yaml:3: unknown field 'learning_rat'", "did you mean 'learning_rate'?"],
    ),
    "config unknown key in a section": (
        "--set rl.stpes=3 on the demo",
        lambda: ["demo", "--quick", "--set", "rl.stpes=3", "--out", "demo"],
        ["--set rl.stpes=3: unknown field 'rl.stpes' (did you mean 'rl.max_steps', 'rl.save_steps' or"],
    ),
    "config wrong type": (
        "max_steps: ten",
        lambda: _yaml("model: m\ntrain_file: f\nmax_steps: ten\n"),
        ["train.yaml:3: field 'max_steps': expected int, got 'ten'"],
    ),
    "config negative steps": (
        "max_steps: -1",
        lambda: _yaml("model: m\ntrain_file: f\nmax_steps: -1\n"),
        ["train.yaml:3: field 'max_steps': must be ≥ 1, got -1"],
    ),
    "config infinite learning rate": (
        "learning_rate: .inf",
        lambda: _yaml("model: m\ntrain_file: f\nlearning_rate: .inf\n"),
        ["train.yaml:3: field 'learning_rate': must be a finite number > 0, got inf"],
    ),
    "config zero generations": (
        "num_generations: 0",
        lambda: _yaml("model: m\ntrain_file: f\nnum_generations: 0\n"),
        ["train.yaml:3: field 'num_generations': must be ≥ 2, got 0"],
    ),
    "config NaN top_p": (
        "top_p: .nan under sampling:, line 3 of an eval config",
        lambda: [
            *["eval", "--model", "m", "--data", _jsonl("eval.jsonl", [GOOD]), "--results", "r.jsonl"],
            *["--config", _write_bytes("eval.yaml", b"seed: 1\nsampling:\n  top_p: .nan\n")],
        ],
        ["eval.yaml:3: field 'sampling': field 'top_p': must be a number in (0, 1], got nan"],
    ),
    "config bad override": (
        "--set max_steps=ten",
        lambda: [*_yaml("model: m\ntrain_file: f\nmax_steps: 3\n"), "--set", "max_steps=ten"],
        ["--set max_steps=ten: field 'max_steps': expected int, got 'ten'"],
    ),
    "config not UTF-8": (
        "a Latin-1 byte in a config comment",
        lambda: ["train", "--config", _write_bytes("train.yaml", b"model: m\ntrain_file: f\n# caf\xe9 au lait\n")],
        ["train.yaml:3: not UTF-8 text (byte 0xe9 at byte 6 of the line)"],
    ),
    "config torn UTF-8": (
        "a config cut inside an 'é'",
        lambda: ["train", "--config", _write_bytes("train.yaml", b"model: m\ntrain_file: f\nname: caf\xc3")],
        ["train.yaml:3: not UTF-8 text (byte 0xc3 at byte 10 of the line)"],
    ),
}


def _write_bytes(name, data):
    with open(name, "wb") as fh:
        fh.write(data)
    return name


def run_case(name):
    """(exit code, the printed message on one line, the exception) of one case, in the current folder."""
    result = CliRunner().invoke(app, CASES[name][1]())
    text = " ".join(result.output.split())
    return result.exit_code, text[text.find("error:") :], result  # after any loading progress bars


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_clear_message(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, message, result = run_case(name)
    assert code == 2, (code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    assert message.startswith("error: ") and result.output.count("error:") == 1, result.output
    assert not [
        line
        for line in result.output.splitlines()
        if line.strip() and "error:" not in line and "Loading weights" not in line
    ], result.output  # nothing else is printed
    for fragment in CASES[name][2]:
        assert fragment in message, (fragment, message)


def test_every_case_is_in_the_reliability_doc():
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "reliability.md").read_text(encoding="utf-8")
    for name in CASES:
        assert f"| {name} |" in doc, name


if __name__ == "__main__":  # print the docs table from the current code
    import os
    import tempfile

    print("| case | input | message |\n|---|---|---|")
    for name, (what, _, _) in CASES.items():
        with tempfile.TemporaryDirectory() as d:
            os.chdir(d)
            _, message, _ = run_case(name)
            message = message.replace(d + "/", "").replace("|", "/")
            print(f"| {name} | {what} | `{message}` |")
