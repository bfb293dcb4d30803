"""One writer per output (recap/util/locks.py): a second process gets one error naming the holder's PID,
a killed holder leaves no stale lock, and the commands that write stores and folders take the lock.

Each case runs two real processes: a holder (a child Python process that takes the lock and waits) and
the command under test in this process."""

import json
import os
import signal
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from recap.cli import app
from recap.eval.store import ResultStore, record_key
from recap.toy.model import ToyModelConfig, build_model, build_tokenizer
from recap.util.locks import OutputLocked, acquire, output_lock, release

HOLD = (
    "import sys\n"
    "from recap.util.locks import acquire\n"
    "acquire(sys.argv[1], folder=sys.argv[2] == 'folder')\n"
    "print('held', flush=True)\n"
    "sys.stdin.read()\n"
)


@pytest.fixture
def holder():
    """``holder(path, folder=False)``: a child process holding the lock of ``path`` until the test ends."""
    children = []

    def start(path, folder=False):
        child = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(path), "folder" if folder else "file"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        children.append(child)
        assert child.stdout.readline().strip() == "held"
        return child

    yield start
    for child in children:
        child.kill()
        child.wait()


def test_a_second_process_is_refused_naming_the_holder_and_a_killed_holder_leaves_no_lock(tmp_path, holder):
    store = tmp_path / "results.jsonl"
    child = holder(store)
    with pytest.raises(OutputLocked) as info:
        acquire(store, "this result store")
    assert f"PID {child.pid}" in str(info.value) and str(store) in str(info.value)
    os.kill(child.pid, signal.SIGKILL)  # the kernel drops a dead holder's lock
    child.wait()
    with output_lock(store):
        pass


def test_the_lock_is_reentrant_in_one_process_and_released_at_the_last_release(tmp_path, holder):
    out = tmp_path / "run"
    lock = acquire(out, folder=True)
    assert acquire(out, folder=True) == lock and out.is_dir()
    release(lock)
    code = "import sys\nfrom recap.util.locks import acquire\nacquire(sys.argv[1], folder=True)\n"
    still = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)
    assert still.returncode != 0 and "OutputLocked" in still.stderr  # one release of two: still held
    release(lock)
    assert subprocess.run([sys.executable, "-c", code, str(out)]).returncode == 0


def test_a_link_to_a_locked_store_is_the_same_store(tmp_path, holder):
    store = tmp_path / "results.jsonl"
    store.touch()
    link = tmp_path / "link.jsonl"
    link.symlink_to(store)
    holder(store)
    with pytest.raises(OutputLocked):
        acquire(link)


def _cli_error(args):
    result = CliRunner().invoke(app, args)
    text = " ".join(result.output.split())
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.output.count("error:") == 1 and "Traceback" not in result.output, result.output
    return text[text.find("error:") :]


def test_recap_eval_on_a_store_another_process_writes_is_one_error_and_loses_nothing(tmp_path, holder, monkeypatch):
    """Before: two `recap eval` on one store both exited 0, and the compaction of one dropped the results
    the other had appended since it read the store."""
    monkeypatch.chdir(tmp_path)
    tok = build_tokenizer()
    cfg = ToyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=64)
    build_model(tok, cfg, seed=0).save_pretrained("model")
    tok.save_pretrained("model")
    with open("eval.jsonl", "w") as fh:
        fh.write(json.dumps({"id": "b1", "kind": "benign", "prompt": "how do i bake bread ?"}) + "\n")
    store = tmp_path / "r.jsonl"
    theirs = {"key": record_key("other", "j", "x", 0), "stage": "other", "example_id": "x"}
    ResultStore(store).add([theirs])
    before = store.read_bytes()
    child = holder(store)
    message = _cli_error(
        ["eval", "--model", "model", "--data", "eval.jsonl", "--results", str(store), "--judge", "toy"]
        + ["--engine", "hf", "--set", "attacks=[clean]", "--set", "sampling.max_new_tokens=4"]
    )
    assert f"PID {child.pid}" in message and "this result store is being written" in message
    assert store.read_bytes() == before


def test_recap_demo_in_a_folder_another_demo_runs_in_is_one_error(tmp_path, holder):
    out = tmp_path / "demo"
    child = holder(out, folder=True)
    message = _cli_error(["demo", "--quick", "--out", str(out)])
    assert f"PID {child.pid}" in message and "this demo folder" in message
    assert sorted(p.name for p in out.iterdir()) == [".recap.lock"]  # nothing was written beside it


@pytest.mark.parametrize("command", ["train", "sft train"])
def test_recap_train_into_an_output_dir_another_process_trains_into_is_one_error(tmp_path, holder, command):
    """Before: the second `recap train` died with a traceback and the folder mixed both runs (the
    train_config.json of one, the final model of the other, interleaved logs)."""
    run = tmp_path / "run"
    child = holder(run, folder=True)
    conf = tmp_path / "train.yaml"
    conf.write_text(f"model: {tmp_path / 'model'}\ntrain_file: {tmp_path / 'mix.jsonl'}\noutput_dir: {run}\n")
    message = _cli_error([*command.split(), "--config", str(conf)])
    assert f"PID {child.pid}" in message and "this training output_dir is being written" in message
    assert sorted(p.name for p in run.iterdir()) == [".recap.lock"]
