"""What `recap train` does with the leftovers of an earlier run (recap/train/resume.py): torn checkpoints are set
aside before anything is decided, so a run whose first checkpoint was cut off starts again from step 0;
a resume on other data (training file, examples in memory, judge files) is refused, naming what changed;
a checkpoint that cannot be written (full disk) ends in one error naming it."""

import json
from dataclasses import replace

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from recap.cli import app
from recap.data.examples import Example, write_examples
from recap.toy.model import ToyModelConfig, build_model, build_tokenizer
from recap.train import TrainConfig, config_dump, input_hashes, train
from recap.train.resume import check_same_run, resume_point
from recap.train.trainer import SELFRESET_STATE

TINY = ToyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
EXAMPLES = [
    Example(id="h", kind="harmful", prompt="how do i steal a car ?", prefill="the user wants"),
    Example(id="t", kind="task", prompt="what is 2 plus 3 ?", reference="5"),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    tok = build_tokenizer()
    build_model(tok, TINY, 0).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _cfg(out, **kw):
    return TrainConfig(
        **{
            **dict(
                model="unused",
                output_dir=str(out),
                judge="toy",
                num_generations=3,
                prompts_per_step=2,
                max_steps=1,
                learning_rate=1e-2,
                max_completion_length=6,
                use_cpu=True,
                save_steps=1,
                gradient_checkpointing=False,
                seed=0,
            ),
            **kw,
        }
    )


def _started(cfg, examples=None, torn=(), complete=()):
    """``output_dir`` as an earlier run of ``cfg`` left it: its train_config.json, checkpoints cut off while
    being saved (weights, no trainer state) and complete ones."""
    from pathlib import Path

    out = Path(cfg.output_dir)
    out.mkdir(parents=True)
    (out / "train_config.json").write_text(json.dumps(config_dump(cfg, input_hashes(cfg, examples)), indent=1))
    for step in (*torn, *complete):
        folder = out / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"w")
        if step in complete:
            (folder / "optimizer.pt").write_bytes(b"o")
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return out


@pytest.mark.parametrize("resume", ["never", "must"])
def test_a_run_killed_during_its_first_checkpoint_starts_again_from_step_0(base, tmp_path, resume):
    cfg = _cfg(tmp_path / "run", model=str(base))
    out = _started(cfg, EXAMPLES, torn=(1,))
    logs = []
    final = train(replace(cfg, resume=resume), EXAMPLES, log=logs.append)
    assert (final / "model.safetensors").is_file() and (out / "checkpoint-1" / "trainer_state.json").is_file()
    assert (out / "incomplete-checkpoint-1" / "model.safetensors").read_bytes() == b"w"  # kept, never loaded
    assert any("incomplete-checkpoint-1" in line for line in logs)
    assert any("starting from step 0" in line for line in logs)


def test_torn_checkpoints_of_another_config_are_still_refused_naming_the_field(tmp_path):
    cfg = _cfg(tmp_path / "run", train_file="mix.jsonl")
    out = _started(cfg, torn=(1,))
    for resume in ("never", "must"):
        with pytest.raises(ValueError, match=r"field 'learning_rate' was 0.01 in the run being resumed, now 0.5"):
            train(replace(cfg, resume=resume, learning_rate=0.5), EXAMPLES, log=lambda s: None)
    assert sorted(p.name for p in out.iterdir()) == [".recap.lock", "incomplete-checkpoint-1", "train_config.json"]


def test_resume_without_any_trace_of_a_run_is_still_an_error(tmp_path):
    with pytest.raises(ValueError, match="no complete checkpoint to resume from"):
        train(_cfg(tmp_path / "empty", resume="must"), EXAMPLES, log=lambda s: None)


def test_resume_refuses_a_training_file_changed_in_place(tmp_path):
    mix = write_examples(tmp_path / "mix.jsonl", EXAMPLES)
    cfg = _cfg(tmp_path / "run", train_file=str(mix), resume="must")
    before = input_hashes(cfg)["train_file"]["sha256"]
    _started(cfg, complete=(3,))
    write_examples(mix, [replace(EXAMPLES[0], prefill="the user wants more"), EXAMPLES[1]])  # rebuilt: other α, seed…
    after = input_hashes(cfg)["train_file"]["sha256"]
    with pytest.raises(ValueError) as info:
        train(cfg, log=lambda s: None)
    assert f"train_file {mix} changed since the run started (sha256 {before[:12]}… → {after[:12]}…)" in str(info.value)


def test_resume_refuses_other_examples_in_memory(tmp_path):
    cfg = _cfg(tmp_path / "run", resume="must")
    _started(cfg, EXAMPLES, complete=(3,))
    with pytest.raises(ValueError, match=r"the training examples \(2 → 1\) changed since the run started"):
        train(cfg, EXAMPLES[:1], log=lambda s: None)


def test_resume_refuses_a_changed_judge_file(tmp_path):
    rubric = tmp_path / "rubric.yaml"
    rubric.write_text("base_url: http://127.0.0.1:9/v1\n")
    cfg = _cfg(tmp_path / "run", judges={"harmful": f"rubric:{rubric}"}, resume="must")
    _started(cfg, EXAMPLES, complete=(3,))
    rubric.write_text("base_url: http://127.0.0.1:9/v1\nmodel: another\n")
    with pytest.raises(ValueError, match=rf"judges.harmful {rubric} changed since the run started"):
        train(cfg, EXAMPLES, log=lambda s: None)


def test_the_same_inputs_pass_and_a_run_recorded_without_hashes_is_not_refused(tmp_path):
    mix = write_examples(tmp_path / "mix.jsonl", EXAMPLES)
    cfg = _cfg(tmp_path / "run", train_file=str(mix))
    out = _started(cfg, complete=(3,))
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["inputs"]["train_file"] == {"path": str(mix), "sha256": input_hashes(cfg)["train_file"]["sha256"]}
    check_same_run(cfg, out, input_hashes(cfg))
    del saved["inputs"]  # a run started before recap recorded its inputs
    (out / "train_config.json").write_text(json.dumps(saved))
    write_examples(mix, EXAMPLES[:1])
    check_same_run(cfg, out, input_hashes(cfg))


def test_a_full_disk_during_a_checkpoint_is_one_error_and_the_run_resumes(base, tmp_path, monkeypatch):
    write_examples(tmp_path / "mix.jsonl", EXAMPLES)
    run = _cfg(tmp_path / "run", model=str(base), train_file=str(tmp_path / "mix.jsonl"))
    cfg = {k: v for k, v in vars(run).items() if k not in ("prefill_sources", "prefill_length")}  # the defaults
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):  # what torch's zip writer does when the disk fills up
        if str(f).endswith("checkpoint-1/optimizer.pt"):
            with open(f, "wb") as fh:
                fh.write(b"PK\x03\x04")
            try:
                raise RuntimeError("basic_ios::clear: iostream error")
            except RuntimeError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    result = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "train.yaml")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: cannot write checkpoint {tmp_path / 'run' / 'checkpoint-1'}: "
    )
    assert "iostream" not in result.output and "recap train --resume" in errors[0]
    monkeypatch.undo()  # room again

    result = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "train.yaml"), "--resume"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "incomplete-checkpoint-1").is_dir() and "starting from step 0" in result.output
    reference = tmp_path / "reference"
    train(_cfg(reference, model=str(base)), EXAMPLES, log=lambda s: None)
    a, b = (
        load_file(reference / "final" / "model.safetensors"),
        load_file(tmp_path / "run" / "final" / "model.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same run as one that never hit the full disk


def test_a_self_reset_checkpoint_without_its_queue_is_torn(tmp_path):
    """With Self-ReSET, a checkpoint whose re-roll queue was not written is set aside, not resumed: the
    resumed run would re-roll other prefixes than an uninterrupted one."""
    from recap.data.selfreset import SelfResetConfig

    cfg = _cfg(tmp_path / "run", self_reset=SelfResetConfig(), resume="must")
    out = _started(cfg, EXAMPLES, complete=(1, 2))
    (out / "checkpoint-1" / SELFRESET_STATE).write_text("{}")  # checkpoint 2 lacks its queue
    assert resume_point(cfg, out, input_hashes(cfg, EXAMPLES), log=lambda s: None) == out / "checkpoint-1"
    assert (out / "incomplete-checkpoint-2").is_dir()


def test_a_checkpoint_of_another_number_of_processes_is_refused_not_set_aside(tmp_path, monkeypatch):
    """Each process saves its own re-roll queue; process 0's file records how many there were. Resuming with
    another number of processes is one error naming the file, and the checkpoint stays where it is (it is
    not torn). With the same number, a checkpoint missing another process's queue is torn."""
    from recap.data.selfreset import SelfResetConfig

    cfg = _cfg(tmp_path / "run", self_reset=SelfResetConfig(), resume="must")
    out = _started(cfg, EXAMPLES, complete=(1, 2))
    for step in (1, 2):
        (out / f"checkpoint-{step}" / SELFRESET_STATE).write_text(json.dumps({"queue": [], "processes": 2}))
    (out / "checkpoint-1" / "selfreset_queue.rank1.json").write_text(json.dumps({"queue": []}))
    inputs = input_hashes(cfg, EXAMPLES)
    with pytest.raises(
        ValueError, match=r"checkpoint-2/selfreset_queue.json: saved by a run of 2 process\(es\); this one has 1"
    ):
        resume_point(cfg, out, inputs, log=lambda s: None)
    assert (out / "checkpoint-2").is_dir() and not list(out.glob("incomplete-*"))
    monkeypatch.setenv("WORLD_SIZE", "2")  # the same number: checkpoint 2 lacks process 1's queue, so it is torn
    assert resume_point(cfg, out, inputs, log=lambda s: None) == out / "checkpoint-1"
    assert (out / "incomplete-checkpoint-2").is_dir()
    (out / "checkpoint-1" / SELFRESET_STATE).write_text(json.dumps({"queue": []}))  # an older, 1-process one
    with pytest.raises(ValueError, match="saved by a run of 1 process"):
        resume_point(cfg, out, inputs, log=lambda s: None)


def test_resume_on_a_finished_run_checks_its_inputs_and_length_instead_of_ignoring_them(base, tmp_path):
    """`recap train --resume` on a finished run returns it only when it is the run of the config: a rebuilt
    training file, another field or a larger max_steps is one `error:` line (exit 2) saying what differs and
    how to go on, never a silent exit 0 with the old model (issue 36, item 8)."""
    mix = write_examples(tmp_path / "mix.jsonl", EXAMPLES)
    out = tmp_path / "run"
    run = _cfg(out, model=str(base), train_file=str(mix))
    (tmp_path / "train.yaml").write_text(
        yaml.safe_dump({k: v for k, v in vars(run).items() if k not in ("prefill_sources", "prefill_length")})
    )

    def recap_train(*args):
        result = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "train.yaml"), *args])
        return result, [line for line in result.output.splitlines() if line.startswith("error:")]

    result, _ = recap_train()
    assert result.exit_code == 0, result.output
    weights = (out / "final" / "model.safetensors").read_bytes()
    result, _ = recap_train("--resume", "--set", "save_steps=5")  # a field that does not change what is trained
    assert result.exit_code == 0 and f"{out}: the run finished at step 1; nothing left to train" in result.output
    result, errors = recap_train("--resume", "--set", "max_steps=3")
    assert result.exit_code == 2 and errors == [
        f"error: {out} holds a run that finished at step 1 (max_steps 1); max_steps is now 3: to train further, "
        f"start a new run from its final model (model: {out / 'final'}) in another output_dir, or set max_steps "
        "back to 1"
    ]
    result, errors = recap_train("--resume", "--set", "learning_rate=0.5")
    assert result.exit_code == 2 and len(errors) == 1 and "field 'learning_rate' was 0.01" in errors[0]
    write_examples(mix, [replace(EXAMPLES[0], prefill="the user wants more"), EXAMPLES[1]])  # rebuilt in place
    result, errors = recap_train("--resume")
    assert result.exit_code == 2 and len(errors) == 1 and f"train_file {mix} changed since the run started" in errors[0]
    result, errors = recap_train()
    assert result.exit_code == 2 and errors == [
        f"error: {out} already holds a finished run ({out / 'final'}); choose another output_dir"
    ]
    assert (out / "final" / "model.safetensors").read_bytes() == weights  # nothing was trained or written


def test_a_finished_run_whose_judge_file_changed_is_refused(tmp_path):
    rubric = tmp_path / "rubric.yaml"
    rubric.write_text("base_url: http://127.0.0.1:9/v1\n")
    cfg = _cfg(tmp_path / "run", judges={"harmful": f"rubric:{rubric}"}, resume="must")
    out = _started(cfg, EXAMPLES)
    (out / "final").mkdir()
    (out / "final" / "config.json").write_text("{}")  # finished (its log_history.json lost)
    logs = []
    assert train(cfg, EXAMPLES, log=logs.append) == out / "final"
    assert logs == [f"{out}: the run finished; nothing left to train"]
    rubric.write_text("base_url: http://127.0.0.1:9/v1\nmodel: another\n")
    with pytest.raises(ValueError, match=rf"judges.harmful {rubric} changed since the run started"):
        train(cfg, EXAMPLES, log=lambda s: None)


@pytest.mark.parametrize("stop", [3, 4])
def test_a_run_resumed_in_a_later_pass_over_the_prompts_draws_them_in_the_uninterrupted_order(base, tmp_path, stop):
    """6 prompts, 2 a step: each pass (epoch) is 3 steps, shuffled anew. A run stopped after step 3 (at the
    end of the first pass) or step 4 (inside the second) and resumed trains the same prompts at every step as
    the uninterrupted run. TRL's sampler draws each pass's order from a generator that a resumed run has not
    advanced; ``set_epoch`` now puts it where the uninterrupted run's is."""
    from transformers import TrainerCallback

    from recap.train import build_trainer

    examples = [
        Example(id=f"t{i}", kind="task", prompt=f"what is {i} plus 3 ?", reference=str(i + 3)) for i in range(6)
    ]
    cfg = _cfg(tmp_path / "run", model=str(base), max_steps=6, max_completion_length=3, seed=1)

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            control.should_training_stop = state.global_step == stop

    def trained(out, stop_early=False, resume=None):
        trainer = build_trainer(replace(cfg, output_dir=str(out)), examples)
        seen, real = [], trainer._generate_and_score_completions

        def spy(inputs):
            seen.append(sorted({x["id"] for x in inputs}))
            return real(inputs)

        trainer._generate_and_score_completions = spy
        if stop_early:
            trainer.add_callback(Stop())
        trainer.train(resume_from_checkpoint=resume)
        return seen

    whole = trained(tmp_path / "whole")
    assert len(whole) == 6 and sorted(sum(whole[:3], [])) == sorted(sum(whole[3:], [])) == [e.id for e in examples]
    first = trained(tmp_path / "parts", stop_early=True)
    rest = trained(tmp_path / "parts", resume=str(tmp_path / "parts" / f"checkpoint-{stop}"))
    assert first + rest == whole


def test_the_epoch_sampler_keeps_trls_order_for_an_uninterrupted_run_and_reproduces_any_pass():
    from trl.trainer.grpo_trainer import RepeatSampler

    from recap.train.trainer import EpochSampler

    def sampler():
        return RepeatSampler(list(range(7)), mini_repeat_count=2, batch_size=3, repeat_count=2, seed=5)

    trl, ours = sampler(), EpochSampler.of(sampler())
    passes = []
    for epoch in range(4):
        ours.set_epoch(epoch)
        passes.append(list(ours))
        assert passes[-1] == list(trl)  # TRL's chained generator, pass after pass
    late = EpochSampler.of(sampler())  # a resumed run's fresh sampler, in pass 3
    late.set_epoch(3)
    assert list(late) == passes[3] and passes[3] != passes[0]
