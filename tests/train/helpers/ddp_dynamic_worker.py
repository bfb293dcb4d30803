"""One rank of a data-parallel RECAP run with dynamic sampling on the miniature world (launched by torchrun
from tests/train/test_dynamic_sampling_distributed_on_cpu.py). Only prompts whose id hashes to 0 mod 3 get
rewards with variance, so the ranks fall short of groups with signal in different rounds. Records per
rank and step: the generation rounds it ran, its groups with signal, and a checksum of its weights."""

import sys
import zlib

import recap.train.run as train_module
from recap.train import RecapTrainer, TrainConfig, train, zero_variance_groups
from toy_rank import Weights, base_and_examples, out, record  # beside this script


real_round = RecapTrainer._round


def counted_round(self, inputs, **kw):
    batch, out_, total, texts = real_round(self, inputs, **kw)
    n = len(batch) // self.num_generations
    local = total[self.accelerator.process_index * len(batch) : (self.accelerator.process_index + 1) * len(batch)]
    record(
        event="round",
        step=self.state.global_step + 1,
        ids=[x["id"] for x in batch[:: self.num_generations]],
        signal=int((~zero_variance_groups(local, self.num_generations)).sum()),
        groups=n,
    )
    return batch, out_, total, texts


RecapTrainer._round = counted_round
real_build = train_module.build_trainer


def build(cfg, examples=None, model=None, tokenizer=None):
    trainer = real_build(cfg, examples, model=model, tokenizer=tokenizer)
    trainer.add_callback(Weights())

    def reward(prompts, completions, id, **kw):  # noqa: A002
        return [
            (zlib.crc32(c.encode()) % 10) / 10 if zlib.crc32(i.encode()) % 3 == 0 else 0.5
            for i, c in zip(id, completions)
        ]

    trainer.reward_funcs = [reward]
    trainer.reward_func_names = ["scripted"]
    return trainer


train_module.build_trainer = build
base, examples = base_and_examples()
steps = int(sys.argv[2])
cfg = TrainConfig(
    model=str(base),
    output_dir=str(out / "run"),
    judge="toy",
    num_generations=4,
    prompts_per_step=4,
    max_steps=steps,
    learning_rate=1e-2,
    max_completion_length=8,
    temperature=1.5,
    use_cpu=True,
    save_steps=steps,
    logging_steps=1,
    gradient_checkpointing=False,
    seed=0,
    micro_batch_size=4,
    dynamic_sampling=True,
    dynamic_sampling_max_extra_rounds=3,
)
final = train(cfg, examples)
record(event="done", final=str(final))
