"""Real `recap` processes killed with SIGKILL mid-run.

* `recap train --resume` finishes a killed run with the same weights and the same per-step log as a run
  that was never killed (weights, optimizer, scheduler, RNG and data position all come back); a
  checkpoint cut off while being saved is set aside, not loaded.
* `recap eval` rerun after a kill keeps every stored result, redoes only the chunk in flight (and a torn
  last line), and ends with the same results as an uninterrupted evaluation."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from recap.data.examples import write_examples
from recap.data.mixture import MixtureConfig, build_mixture
from recap.toy.data import train_examples
from recap.toy.model import ToyModelConfig, build_model, build_tokenizer

pytestmark = pytest.mark.slow
TINY = ToyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
STEPS = 12


def _recap(*args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen([sys.executable, "-m", "recap.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    tok = build_tokenizer()
    model = build_model(tok, TINY, seed=0)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    mix = build_mixture(train_examples(seed=0)[:40], replace(MixtureConfig(alpha=0.5, prefill_words="4-8"), seed=0))
    write_examples(root / "mix.jsonl", mix)
    cfg = dict(model=str(root / "base"), train_file=str(root / "mix.jsonl"), judge="toy", num_generations=4,
               prompts_per_step=2, max_steps=STEPS, learning_rate=1e-2, max_completion_length=8, save_steps=1,
               logging_steps=1, use_cpu=True, gradient_checkpointing=False, num_threads=1, seed=0,
               temperature=1.0)
    return root, cfg


def _config(root, cfg, name):
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(dict(cfg, output_dir=str(root / name))))
    return path


def _steps(log_history):
    return [(h["step"], round(h["loss"], 6), round(h.get("reward", 0.0), 6)) for h in log_history if "loss" in h]


def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(setup):
    root, cfg = setup
    whole = _recap("train", "--config", str(_config(root, cfg, "whole")))
    assert whole.wait(timeout=600) == 0, whole.stdout.read()

    killed_dir = root / "killed"
    proc = _recap("train", "--config", str(_config(root, cfg, "killed")))
    deadline = time.time() + 600
    while not (killed_dir / "checkpoint-3" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed_dir / "final").exists()
    done = sorted(int(p.name.split("-")[1]) for p in killed_dir.glob("checkpoint-*"))
    assert done and max(done) < STEPS
    # A kill during the next save: a checkpoint folder with weights but no trainer state.
    torn = killed_dir / f"checkpoint-{max(done) + 1}"
    shutil.rmtree(torn, ignore_errors=True)
    torn.mkdir()
    shutil.copy(killed_dir / f"checkpoint-{max(done)}" / "model.safetensors", torn / "model.safetensors")

    again = _recap("train", "--config", str(_config(root, cfg, "killed")))  # without --resume: refused
    assert again.wait(timeout=300) == 2
    message = again.stdout.read()
    assert "holds checkpoints of an earlier run" in message and "--resume" in message

    resumed = _recap("train", "--config", str(_config(root, cfg, "killed")), "--resume")
    assert resumed.wait(timeout=600) == 0
    out = resumed.stdout.read()
    assert f"incomplete-checkpoint-{max(done) + 1}" in out and "resuming from" in out
    assert (killed_dir / f"incomplete-checkpoint-{max(done) + 1}").is_dir()

    a = load_file(root / "whole" / "final" / "model.safetensors")
    b = load_file(killed_dir / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    history_a = json.loads((root / "whole" / "log_history.json").read_text())
    history_b = json.loads((killed_dir / "log_history.json").read_text())
    assert _steps(history_b) == _steps(history_a) and len(_steps(history_a)) == STEPS


def test_sigkill_during_evaluation_loses_only_the_chunk_in_flight(setup):
    root, _ = setup
    from recap.toy.data import eval_examples

    write_examples(root / "eval.jsonl", eval_examples(seed=0))
    conf = root / "eval.yaml"
    conf.write_text(yaml.safe_dump({"attacks": ["clean", "prefill", "ipr"], "ipr_rounds": 2, "chunk_size": 2,
                                    "prefill_words": "8-30", "samples_per_prompt": 2,
                                    "sampling": {"max_new_tokens": 12, "temperature": 1.0}}))

    def run(results):
        return _recap("eval", "--model", str(root / "base"), "--data", str(root / "eval.jsonl"), "--results",
                      str(results), "--judge", "toy", "--engine", "hf", "--config", str(conf), "--name", "base")

    whole = run(root / "whole.jsonl")
    assert whole.wait(timeout=600) == 0, whole.stdout.read()
    path = root / "killed.jsonl"
    proc = run(path)
    deadline = time.time() + 600
    while not path.exists() or path.read_bytes().count(b"\n") < 20:
        assert proc.poll() is None and time.time() < deadline, "evaluation ended before it could be killed"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = path.read_bytes()
    n_whole = (root / "whole.jsonl").read_bytes().count(b"\n")
    assert 20 <= kept.count(b"\n") < n_whole
    path.write_bytes(kept[: kept.rstrip(b"\n").rfind(b"\n") + 40])  # and a torn last line, as if cut mid-write

    again = run(path)
    assert again.wait(timeout=600) == 0
    assert "truncated last line" in again.stdout.read()

    def results(p):
        rows = [json.loads(line) for line in p.read_text().splitlines()]
        return {r["key"]: (r["prompt_text"], r["completion"], r["label"]) for r in rows}

    final, reference = results(path), results(root / "whole.jsonl")
    assert final == reference  # nothing lost, nothing different
    assert path.read_text().count("\n") - len(final) <= 2  # at most the chunk in flight was written twice
