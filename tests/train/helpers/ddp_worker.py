"""One rank of a data-parallel RECAP run on the miniature world (launched by torchrun from
tests/train/test_train_distributed_on_cpu.py). Records, per rank, what the test checks: the prompt ids it
generated for at each step, the rewards it computed, and a checksum of its weights after each step."""

import sys
import zlib

import recap.train.run as train_module
from recap.train import RecapTrainer, TrainConfig, train
from toy_rank import Weights, base_and_examples, out, record  # beside this script


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
base, examples = base_and_examples()
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
