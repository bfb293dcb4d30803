"""One rank of a data-parallel Self-ReSET run whose re-rolls add steps (``reroll_steps: add``), launched by
torchrun from tests/train/test_selfreset_distributed_on_cpu.py as ``SCRIPT OUT PLAN MODE``. Only rank 0's
stand-in cutter cuts (one cut per scanned group), so only rank 0 has fresh groups displaced by re-rolls, and
only its planner is not done when the planned steps end. MODE ``whole`` trains the run; ``stop`` stops it
after step 2's checkpoint (a kill there); ``resume`` resumes it from that checkpoint. Records per rank: the
groups each step trains on (id and re-roll source), a checksum of the weights after each step, and the
planner's counters at the end."""

import json
import sys
from pathlib import Path

from transformers import TrainerCallback

from recap.data.examples import Example
from recap.data.selfreset import Cutting, SelfResetConfig
from recap.train import TrainConfig, build_trainer
from recap.inference.models import load_model
from toy_rank import Weights, base_and_examples, rank, record  # beside this script

base, _ = base_and_examples()
plan, mode = int(sys.argv[2]), sys.argv[3]
cfg = TrainConfig(
    model=str(base),
    output_dir=str(Path(sys.argv[1]) / "run"),
    judge="toy",
    num_generations=2,
    prompts_per_step=2,  # one group per rank and step
    max_steps=plan,
    learning_rate=1e-3,
    max_completion_length=4,
    use_cpu=True,
    save_steps=1,
    gradient_checkpointing=False,
    seed=0,
    dynamic_sampling=False,  # every group is trained
    self_reset=SelfResetConfig(skip_zero_variance=False, reroll_steps="add"),
)
examples = [Example(id=f"h{i}", kind="harmful", prompt=f"how do i steal a car {i} ?") for i in range(2 * plan)]
model, tokenizer = load_model(str(base))
trainer = build_trainer(cfg, examples, model=model, tokenizer=tokenizer)
planner = trainer.selfreset


def cutter(request, kind, reasonings):
    if rank != 0:
        return [None] * len(reasonings)
    return [Cutting(prefix="it is fine .", position=0, length=1)] + [None] * (len(reasonings) - 1)


planner.cutter = cutter
harvest = planner.harvest


def recorded(rows, *args, **kwargs):
    out = harvest(rows, *args, **kwargs)
    groups = [(r["id"], r["reroll"]) for r in rows[:: cfg.num_generations]]
    record(event="trained", step=trainer.state.global_step + 1, groups=groups)
    return out


planner.harvest = recorded


class Done(TrainerCallback):
    def on_train_end(self, args, state, control, **kw):
        record(event="done", steps=state.global_step, pending=len(planner.pending), counts=dict(planner.counts))


class StopAt2(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 2:
            control.should_training_stop = True


trainer.add_callback(Weights())
trainer.add_callback(Done())
if mode == "stop":
    trainer.add_callback(StopAt2())
trainer.train(resume_from_checkpoint=str(Path(cfg.output_dir) / "checkpoint-2") if mode == "resume" else None)
if mode == "stop":
    sys.exit(0)
if rank == 0:  # the main process writes the run's records
    record(event="stats", stats=json.loads((Path(cfg.output_dir) / "selfreset_stats.json").read_text()))
