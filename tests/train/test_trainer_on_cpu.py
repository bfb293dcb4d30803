"""RecapTrainer against the TRL it overrides (recap/train/trainer.py): the private GRPOTrainer API it relies on,
DAPO's clip-higher acting once a rollout batch trains more than one update (``num_iterations``,
``updates_per_generation``), and rollouts with recap's decode loop — each group's prompt read once, and
TRL's generate taking over, logged, where the loop cannot decode."""

import logging

import pytest
import torch
from helpers.grpo import EXAMPLES, G, completion_logps, grpo_batch, grpo_trainer, loss_and_grads, toy_model, toy_prompts

from recap.toy.model import build_tokenizer
from recap.train import grpo_config, rl_rows
from recap.train.trainer import TRL_PRIVATE_API, trl_private_api_changes


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_the_private_trl_methods_recap_overrides_are_as_expected():
    import trl

    changes = trl_private_api_changes()
    assert changes == [], f"trl {trl.__version__} changed what RecapTrainer overrides:\n" + "\n".join(changes)


def test_a_changed_private_method_is_named_with_the_trl_version():
    import trl

    class Renamed:
        def _compute_loss(self, model, batch):  # a parameter renamed
            pass

    changes = trl_private_api_changes(Renamed)
    assert f"trl {trl.__version__}: GRPOTrainer._compute_loss(model, batch) — RecapTrainer overrides it as " in (
        "\n".join(changes)
    )
    assert f"trl {trl.__version__}: GRPOTrainer._prepare_inputs is gone" in changes
    assert len(changes) == len(TRL_PRIVATE_API)


# --- clip-higher ----------------------------------------------------------------------------------------


def test_updates_per_generation_and_num_iterations_reach_trl(tmp_path):
    from helpers.grpo import train_config

    args = grpo_config(train_config(tmp_path, micro_batch_size=6, updates_per_generation=4, num_iterations=2))
    assert (args.gradient_accumulation_steps, args.steps_per_generation, args.num_iterations) == (2, 8, 2)
    assert args.generation_batch_size == 4 * 3 * G  # four optimizer steps' prompts per rollout batch
    with pytest.raises(ValueError, match="field 'updates_per_generation': must be ≥ 1, got 0"):
        grpo_config(train_config(tmp_path, updates_per_generation=0))


@pytest.mark.parametrize("shared", ["on", "off"])
def test_the_clip_bounds_the_ratio_once_the_policy_has_moved(tok, tmp_path, shared):
    """DAPO's clipped objective through RecapTrainer's loss pass, with old log-probabilities set so that every
    token's ratio π/π_old is e^δ: outside [1 − 0.2, 1 + 0.28] on the side the advantage pushes, the token gives no
    gradient; inside, or on the other side, it does. TRL logs the clipped share."""
    trainer = grpo_trainer(toy_model(tok, "sdpa"), tok, tmp_path, shared)
    batch = grpo_batch(toy_prompts(tok), len(tok), filler=None)
    with torch.no_grad():
        current = completion_logps(trainer, batch)[0]

    def gradient(delta: float, advantage: float) -> float:
        trainer._metrics["train"].clear()
        moved = dict(batch, advantages=torch.full((len(current),), advantage), old_per_token_logps=current - delta)
        _, grads = loss_and_grads(trainer, moved)
        return max(g.abs().max().item() for g in grads.values())

    def logged(name: str) -> set[float]:  # one value per loss pass (two with length buckets, unshared)
        return {round(x, 6) for x in trainer._metrics["train"][name]}

    assert gradient(0.5, 1.0) == 0.0  # ratio 1.65 > 1.28 with A > 0: clipped
    assert logged("clip_ratio/high_mean") == {1.0}
    assert gradient(0.1, 1.0) > 0  # ratio 1.11: inside the range
    assert logged("clip_ratio/region_mean") == {0.0}
    assert gradient(-0.5, -1.0) == 0.0  # ratio 0.61 < 0.8 with A < 0: clipped
    assert logged("clip_ratio/low_mean") == {1.0}
    assert gradient(-0.1, -1.0) > 0
    assert gradient(0.5, -1.0) > 0  # ratio 1.65 with A < 0: the unclipped term is the smaller, no clip


@pytest.mark.parametrize(
    ("updates", "iterations", "binds"),
    [(1, 1, False), (2, 1, True), (1, 2, True)],
    ids=["on-policy", "2-updates", "2-passes"],
)
def test_several_updates_per_rollout_batch_make_the_clip_bind(tok, tmp_path, updates, iterations, binds):
    """Real training: with one update per rollout batch the ratio is exactly 1 and nothing is ever clipped;
    with two updates (mini-batches) or two passes, the second trains on rollouts of the policy before the
    first update, the ratio departs from 1, and tokens are clipped."""
    trainer = grpo_trainer(
        toy_model(tok, "sdpa"),
        tok,
        tmp_path,
        "auto",
        prompts_per_step=1,
        max_steps=2,
        learning_rate=0.05,
        logging_steps=1,
        temperature=1.5,
        updates_per_generation=updates,
        num_iterations=iterations,
    )
    ratios = []
    compute_loss = trainer._compute_loss

    def spy(model, inputs):
        if inputs.get("old_per_token_logps") is not None:
            with torch.no_grad():
                input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
                mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
                width = inputs["completion_ids"].shape[1]
                logps = trainer._get_per_token_logps_and_entropies(model, input_ids, mask, width)[0]
            scored = inputs["completion_mask"].bool()
            ratios.append((logps - inputs["old_per_token_logps"])[scored].abs().max().item())
        return compute_loss(model, inputs)

    trainer._compute_loss = spy
    torch.manual_seed(0)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "clip_ratio/region_mean" in h]
    assert len(logs) == 2
    assert logs[0]["clip_ratio/region_mean"] == 0.0  # the first update is on-policy
    if not binds:
        assert ratios == [] and logs[1]["clip_ratio/region_mean"] == 0.0  # TRL never computes old log-probs
        return
    assert ratios[0] < 1e-5 and ratios[-1] > 0.1  # the second update's ratio has left 1
    assert logs[1]["clip_ratio/region_mean"] > 0


# --- rollouts -------------------------------------------------------------------------------------------


def test_rollouts_read_each_groups_prompt_once(tok, tmp_path):
    """The default rollouts (``rollout_decoder: continuous``): the first forward reads each distinct prompt once
    (all but its last token), the next reads one token per row, and each later forward one token per row still
    decoding — never a prompt again."""
    trainer = grpo_trainer(toy_model(tok, "sdpa"), tok, tmp_path, "auto")
    assert trainer.rollout_decoder == "continuous"
    prompts = [tok(r["prompt"])["input_ids"] for r in rl_rows(EXAMPLES, tok)]
    rows = [p for p in prompts for _ in range(G)]
    shapes = []
    trainer.model.register_forward_pre_hook(
        lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    completions, _ = trainer._generate_single_turn(rows, None, {}, G)
    assert len(completions) == len(rows)
    assert shapes[0] == (len(prompts), max(map(len, prompts)) - 1)
    assert shapes[1] == (len(rows), 1)
    assert all(width == 1 for _, width in shapes[1:])
    prompt_reads = shapes[0][0] * shapes[0][1] + shapes[1][0]
    assert prompt_reads < sum(map(len, rows)) / 2  # TRL's generate reads every row's prompt
    assert trainer._metrics["train"]["rollouts/fallback"] == [0.0]


def test_rollouts_that_fall_back_to_trls_generate_say_so_once(tok, tmp_path, caplog):
    trainer = grpo_trainer(toy_model(tok, "sdpa"), tok, tmp_path, "auto")
    trainer.generation_config.top_k = 5
    rows = [tok(r["prompt"])["input_ids"] for r in rl_rows(EXAMPLES, tok) for _ in range(G)]
    with caplog.at_level(logging.WARNING, logger="recap.train.trainer"):
        trainer._generate_single_turn(rows, None, {}, G)
        trainer._generate_single_turn(rows, None, {}, G)
    assert [r.getMessage() for r in caplog.records] == [
        "rollouts: TRL's generate decodes instead of recap's loop (top_k sampling)"
    ]
    assert trainer._metrics["train"]["rollouts/fallback"] == [1.0, 1.0]
