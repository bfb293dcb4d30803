"""One rank of a data-parallel RECAP run on the miniature world (launched by torchrun from
tests/train/test_train_distributed_on_cpu.py). Records, per rank, what the test checks: the prompt ids it
generated for at each step, the rewards it computed, and a checksum of its weights after each step."""

import hashlib
import json
import os
import sys
import zlib
from pathlib import Path

import torch
from transformers import TrainerCallback

import recap.train.run as train_module
from recap.data.mixture import MixtureConfig, build_mixture
from recap.toy.data import train_examples
from recap.toy.model import ToyModelConfig, build_model, build_tokenizer
from recap.train import RecapTrainer, TrainConfig, train

out = Path(sys.argv[1])
rank = int(os.environ["RANK"])
log = out / f"rank{rank}.jsonl"
torch.set_num_threads(1)


def record(**row):
    with log.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def checksum(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


class Weights(TrainerCallback):
    def on_step_end(self, args, state, control, model=None, **kw):
        record(event="weights", step=state.global_step, sha=checksum(model))


real_generate = RecapTrainer._generate_and_score_completions


def generate(self, inputs):
    record(event="prompts", step=self.state.global_step + 1, ids=[x["id"] for x in inputs])
    return real_generate(self, inputs)


RecapTrainer._generate_and_score_completions = generate
real_build = train_module.build_trainer


def build(cfg, examples=None, model=None, tokenizer=None):
    trainer = real_build(cfg, examples, model=model, tokenizer=tokenizer)
    trainer.add_callback(Weights())
    router = trainer.reward_funcs[0]
    real_call = router.__call__

    def reward(prompts, completions, **kw):
        # The toy judge gives an untrained model 0 everywhere; a deterministic function of the completion
        # on top makes the advantages (and so the updates) non-zero.
        values = [
            v + (zlib.crc32(c.encode()) % 10) / 10 for v, c in zip(real_call(prompts, completions, **kw), completions)
        ]
        record(event="rewards", step=trainer.state.global_step + 1, values=[float(v) for v in values])
        return values

    trainer.reward_funcs[0] = reward
    reward.__name__ = "recap_reward"
    return trainer


train_module.build_trainer = build
tok = build_tokenizer()
base = out / "base"
if rank == 0 and not (base / "config.json").exists():
    build_model(
        tok, ToyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), seed=0
    ).save_pretrained(base)
    tok.save_pretrained(base)
torch.distributed.init_process_group("gloo") if not torch.distributed.is_initialized() else None
torch.distributed.barrier()
examples = build_mixture(train_examples(seed=0)[:48], MixtureConfig(alpha=0.5, prefill_words="4-8", seed=0))
cfg = TrainConfig(
    model=str(base),
    output_dir=str(out / "run"),
    judge="toy",
    num_generations=4,
    prompts_per_step=4,
    max_steps=int(sys.argv[2]),
    learning_rate=1e-2,
    max_completion_length=8,
    use_cpu=True,
    save_steps=int(sys.argv[2]),
    logging_steps=1,
    gradient_checkpointing=False,
    seed=0,
)
final = train(cfg, examples)
record(event="done", final=str(final))
