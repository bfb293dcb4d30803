"""What `recap train` shows and keeps of a run (recap/train/run.py): TRL's log dicts go to
output_dir/train_log.jsonl, not to the terminal, and a progress callback follows every step with the
latest rewards by kind (the CLI draws one line from it)."""

import json
from dataclasses import replace

import pytest

from recap.data.examples import Example
from recap.toy.model import ToyModelConfig, build_model, build_tokenizer
from recap.train import TRAIN_LOG, TrainConfig, train

TINY = ToyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
EXAMPLES = [
    Example(id="h", kind="harmful", prompt="how do i steal a car ?", prefill="the user wants"),
    Example(id="b", kind="benign", prompt="how do i kill a python process ?"),
    Example(id="t", kind="task", prompt="what is 2 plus 3 ?", reference="5"),
    Example(id="t2", kind="task", prompt="what is 4 plus 3 ?", reference="7"),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny toy model and its tokenizer, saved once for the module."""
    tok = build_tokenizer()
    path = tmp_path_factory.mktemp("base")
    build_model(tok, TINY, 0).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def small_run(base, out, **over) -> TrainConfig:
    """Two prompts a step, two rollouts each, on the toy judge; ``over`` sets what a test varies."""
    fields = dict(judge="toy", num_generations=2, prompts_per_step=2, use_cpu=True, save_steps=10)
    fields |= dict(gradient_checkpointing=False, max_completion_length=6, seed=0)
    return replace(TrainConfig(model=str(base), output_dir=str(out), **fields), **over)


def test_logs_go_to_a_file_and_progress_follows_every_step(base, tmp_path, capsys):
    cfg = small_run(base, tmp_path / "run", max_steps=3, learning_rate=1e-2, logging_steps=1)
    seen = []
    train(cfg, EXAMPLES, log=lambda s: None, progress=lambda step, total, logs: seen.append((step, total, logs)))
    assert [(step, total) for step, total, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    assert any(k.startswith("reward/") for k in seen[-1][2])  # rewards by kind reach the progress line
    lines = [json.loads(x) for x in (tmp_path / "run" / TRAIN_LOG).read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3]
    assert "{'loss'" not in capsys.readouterr().out  # no raw TRL dicts on the terminal


def test_epochs_set_the_run_length_from_the_training_prompts(base, tmp_path):
    """epochs 1.5 over 4 prompts at 2 a step: ⌈1.5 × 4 / 2⌉ = 3 steps, whatever max_steps said; the run's
    record holds the steps it was planned with."""
    cfg = small_run(base, tmp_path / "run", max_steps=100, epochs=1.5, max_completion_length=4)
    seen = []
    train(cfg, EXAMPLES, log=lambda s: None, progress=lambda step, total, logs: seen.append((step, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["max_steps"] == 3
    notes = []
    train(cfg, EXAMPLES, log=notes.append)  # the finished run is this config's: nothing left to train
    assert "nothing left to train" in notes[-1]
    with pytest.raises(ValueError, match="field 'epochs' was 1.5 in the run being resumed, now 2.0"):
        train(replace(cfg, epochs=2.0), EXAMPLES, log=notes.append)  # another run: refused
