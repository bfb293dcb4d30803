"""Self-ReSET's data construction (recap/data/selfreset.py) on hand-made trajectories: where the streaming
cut falls, the re-roll queue, re-rolls as groups of their own with the reused prefix in the prompt (out of
the loss), the benign re-queue, and the streaming guard's one forward pass."""

import json
from types import SimpleNamespace

import pytest
import torch

from recap.data.onpolicy import toy_step_judge
from recap.data.selfreset import (
    CONTROVERSIAL,
    SAFE,
    UNSAFE,
    RerollItem,
    RerollQueue,
    SelfResetConfig,
    SelfResetPlanner,
    StreamGuard,
    StreamGuardConfig,
    TokenRisk,
    ToyTokenJudge,
    cutter_for,
    sentence_cutter,
    stream_cut,
    stream_cutter,
)
from recap.inference.chat import render_prompt
from recap.rewards.judges import Verdict
from recap.toy.judge import ToyJudge
from recap.toy.model import build_tokenizer


def _risks(text: str, levels: str) -> list[TokenRisk]:
    """Whitespace tokens of ``text`` with levels from a string: s(afe), u(nsafe), c(ontroversial)."""
    import re

    names = {"s": SAFE, "u": UNSAFE, "c": CONTROVERSIAL}
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    assert len(spans) == len(levels)
    return [TokenRisk(s, e, names[x]) for (s, e), x in zip(spans, levels)]


# --------------------------------------------------------------------------------------------
# Where the streaming cut falls
# --------------------------------------------------------------------------------------------
TEXT = "First I look . Then we do it now , step by step . Done"
#       0     1 2    3 4    5  6  7  8   9 10   11 12  13 14


def test_one_risky_token_is_not_enough():
    assert stream_cut(TEXT, _risks(TEXT, "sssssussssusssu")) is None


def test_by_default_the_cut_keeps_the_first_risky_token_and_stops_there():
    # token 2 ("look") is risky alone; the first consecutive pair is 6-7; the cut starts at token 2 and,
    # as in the reference launch script (no --enable-punctuation-after), ends on it
    cut = stream_cut(TEXT, _risks(TEXT, "ssusssuusssssss"))
    assert (cut.first_token, cut.end_token, cut.n_tokens) == (2, 2, 15)
    assert cut.prefix == "First I look"
    assert SelfResetConfig().extend_to_punctuation is False


def test_cut_starts_at_the_first_risky_token_and_extends_to_the_next_punctuation():
    cut = stream_cut(TEXT, _risks(TEXT, "ssusssuusssssss"), extend_to_punctuation=True)
    assert (cut.first_token, cut.end_token, cut.n_tokens) == (2, 3, 15)
    assert cut.prefix == "First I look ."


def test_pair_start_and_punctuation_inside_a_token():
    cut = stream_cut(TEXT, _risks(TEXT, "ssusssuusssssss"), start="pair", extend_to_punctuation=True)
    assert (cut.first_token, cut.end_token) == (6, 9)  # "," is the next punctuation after "do"
    assert cut.prefix == "First I look . Then we do it now ,"
    text = "ok so we do it, then more"
    cut = stream_cut(text, _risks(text, "ssuusss"), extend_to_punctuation=True)
    assert cut.prefix == "ok so we do it,"  # the token that carries the comma is kept


def test_without_extension_or_punctuation_within_lookahead_the_cut_stays_at_its_start():
    cut = stream_cut(TEXT, _risks(TEXT, "ssssssuusssssss"), extend_to_punctuation=False)
    assert (cut.end_token, cut.prefix) == (6, "First I look . Then we do")
    cut = stream_cut(TEXT, _risks(TEXT, "ssssssuusssssss"), extend_to_punctuation=True, lookahead=3)  # "," is 3 on
    assert cut.prefix == "First I look . Then we do"


def test_controversial_counts_unless_only_unsafe_is_risky():
    levels = "sssssscusssssss"
    assert stream_cut(TEXT, _risks(TEXT, levels)).first_token == 6
    assert stream_cut(TEXT, _risks(TEXT, levels), risky=(UNSAFE,)) is None


def test_toy_judge_labels_from_the_token_that_tells_an_unsafe_sentence_apart():
    judge = ToyTokenJudge()
    text = "the user wants to steal a car . i should be fully helpful . i will explain every step ."
    risks = judge.levels(text)
    words = text.split()
    unsafe = [w for w, r in zip(words, risks) if r.level == UNSAFE]
    # "i should" starts the safe "i should refuse" too: risky from "be"; "i will" is unsafe from "will"
    assert unsafe == ["be", "fully", "helpful", "will", "explain", "every", "step"]
    assert all(text[r.start : r.end] == w for r, w in zip(risks, words))
    cut = stream_cut(text, risks)
    assert cut.prefix == "the user wants to steal a car . i should be"  # the first risky token, included
    assert cut.first_token == words.index("be")
    assert stream_cut(text, risks, extend_to_punctuation=True).prefix.endswith("i should be fully helpful .")


def test_toy_judge_knows_only_the_training_pool_of_unsafe_sentences():
    from recap.data.selfreset import load_token_judge
    from recap.toy import world

    train, held_out = world.flawed_sentences("harmful", "train"), world.flawed_sentences("harmful", "eval")
    judge, oracle = ToyTokenJudge(), load_token_judge("toy:all")
    assert load_token_judge("toy").pool == "train" and oracle.pool == "all"
    for sentence in held_out:  # the attacks' sentences read as safe: no cut is made at one
        text = f"the user wants to steal a car . {sentence} . i will explain every step ."
        assert stream_cut(text, judge.levels(text)).prefix.endswith(". i will")  # at the training sentence
        before = len(f"the user wants to steal a car . {sentence}".split())
        assert stream_cut(text, oracle.levels(text)).first_token < before  # the oracle cuts inside it
        alone = f"the user wants to steal a car . {sentence} ."
        assert stream_cut(alone, judge.levels(alone)) is None
        assert stream_cut(alone, oracle.levels(alone)) is not None
    for sentence in train:
        text = f"the user wants to steal a car . {sentence} ."
        assert stream_cut(text, judge.levels(text)) is not None
    with pytest.raises(ValueError, match="pool"):
        ToyTokenJudge("eval")


@pytest.mark.parametrize(
    "text",
    [
        "the user wants to steal a car . this could hurt people . i should refuse .",
        "the user wants to crack an egg . this sounds dangerous . i must refuse to be safe .",  # over-cautious, not unsafe
        "the user wants to steal a car . i should refuse .",
        "the user has a",  # the start of an unsafe sentence that never ends as one
    ],
)
def test_toy_judge_leaves_safe_and_over_cautious_reasoning_uncut(text):
    assert stream_cut(text, ToyTokenJudge().levels(text)) is None


def test_stream_and_sentence_cutters_agree_on_world_sentences():
    text = "the user wants to rob a store . they said it is for research . giving the steps is helpful ."
    extended = SelfResetConfig(extend_to_punctuation=True)
    stream = stream_cutter(ToyTokenJudge(), extended)("how do i rob a store ?", "harmful", [text])[0]
    sentence = sentence_cutter(lambda p, k: toy_step_judge(k))("how do i rob a store ?", "harmful", [text])[0]
    assert stream.prefix == sentence.prefix == "the user wants to rob a store . they said it is for research ."
    assert (stream.position, stream.length) == (text.split().index("they"), len(text.split()))
    assert (sentence.position, sentence.length) == (1, 3)  # sentence index


def test_cutter_for_auto_needs_the_toy_judge_or_a_stream_guard():
    assert callable(cutter_for(SelfResetConfig(), {"harmful": ToyJudge()}))
    with pytest.raises(ValueError, match="stream-guard"):
        cutter_for(SelfResetConfig(), {"harmful": SimpleNamespace(name="guard")})
    with pytest.raises(ValueError, match="unknown token judge"):
        cutter_for(SelfResetConfig(judge="guard:x.yaml"), {})


@pytest.mark.parametrize(
    "field, value",
    [
        ("cut", "token"),
        ("cut_start", "last"),
        ("risky", ["safe"]),
        ("buffer_size", 0),
        ("refusal_threshold", -1),
        ("judge", ""),
        ("reroll_steps", "extend"),
        ("max_added_steps", -1),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        SelfResetConfig(**{field: value})


# --------------------------------------------------------------------------------------------
# The queue
# --------------------------------------------------------------------------------------------
def _item(i, source="cut", prefix="p"):
    return RerollItem(row={"id": f"x{i}"}, source=source, prefix=prefix)


def test_queue_is_fifo_bounded_and_keeps_duplicates():
    q = RerollQueue(3)
    q.push([_item(0), _item(1), _item(1)], step=4)
    assert [i.row["id"] for i in q.items()] == ["x0", "x1", "x1"] and all(i.added_at == 4 for i in q.items())
    q.push([_item(2)], step=5)  # over capacity: the oldest leaves
    assert [i.row["id"] for i in q.items()] == ["x1", "x1", "x2"] and q.evicted == 1
    assert [i.row["id"] for i in q.pop(2)] == ["x1", "x1"]
    assert [i.row["id"] for i in q.pop(5)] == ["x2"] and q.pop(1) == []
    assert (q.pushed, q.popped) == (4, 3)


def test_queue_rows_round_trip_and_reject_missing_fields():
    q = RerollQueue(4)
    q.push([_item(0), _item(1, "requeue", "")], step=2)
    again = RerollQueue.from_rows(json.loads(json.dumps(q.to_rows())), 4)
    assert again.to_rows() == q.to_rows()
    with pytest.raises(ValueError, match="lacks"):
        RerollQueue.from_rows([{"row": {}}], 4)


# --------------------------------------------------------------------------------------------
# Composing a round: re-rolls first, as groups of their own
# --------------------------------------------------------------------------------------------
G = 2


def _row(i, kind="harmful", request=None, prefilled=False):
    request = request or f"how do i steal a car {i} ?"
    conv = json.dumps([{"role": "user", "content": request}])
    return {
        "id": f"r{i}",
        "kind": kind,
        "prompt": f"<fresh {i}>",
        "conversation": conv,
        "prefilled": prefilled,
        "reference": None,
    }


def _rows(*ids, kind="harmful"):
    return [dict(_row(i, kind)) for i in ids for _ in range(G)]


def _render(messages, prefill):
    return f"[{messages[-1]['content']}]" + (f"|{prefill}" if prefill else "")


def _planner(cfg=None, cutter=None):
    cfg = cfg or SelfResetConfig()
    return SelfResetPlanner(cfg, _render, cutter or stream_cutter(ToyTokenJudge(), cfg), group_size=G)


def test_rerolls_take_the_first_groups_and_displaced_fresh_groups_come_next_round():
    planner = _planner()
    planner.queue.push(
        [
            RerollItem(row=_row(7), source="cut", prefix="the user wants to x . sharing this is fine ."),
            RerollItem(row=_row(8, "benign"), source="requeue"),
        ],
        step=0,
    )
    out = planner.compose(_rows(0, 1, 2), step=1)
    assert [r["id"] for r in out] == ["r7", "r7", "r8", "r8", "r0", "r0"]
    assert out[0]["prompt"] == "[how do i steal a car 7 ?]|the user wants to x . sharing this is fine ."
    assert out[2]["prompt"] == "[how do i steal a car 8 ?]"  # re-queued whole: no cut
    assert [r["reroll"] for r in out] == ["cut", "cut", "requeue", "requeue", "", ""]
    assert all(set(r) >= {"reroll", "reroll_prefix"} and r["prefilled"] is False for r in out)
    # r1 and r2 were displaced: they open the next round, before its own fresh prompts
    assert [r["id"] for r in planner.compose(_rows(3, 4, 5), step=2)] == ["r1", "r1", "r2", "r2", "r3", "r3"]
    assert [g[0]["id"] for g in planner.pending] == ["r4", "r5"]


def test_refill_rounds_drop_displaced_draws_and_the_wait_text_follows_the_cut():
    planner = _planner(SelfResetConfig(wait="wait ,"))
    planner.queue.push([RerollItem(row=_row(7), source="cut", prefix="it is fine .")], step=0)
    out = planner.compose(_rows(0, 1), step=1, fresh=False)
    assert [r["id"] for r in out] == ["r7", "r7", "r0", "r0"] and not planner.pending
    assert out[0]["prompt"].endswith("|it is fine . wait ,") and out[0]["reroll_prefix"] == "it is fine . wait ,"


def test_past_the_planned_steps_waiting_fresh_groups_come_first_and_the_next_pass_only_fills():
    planner = SelfResetPlanner(SelfResetConfig(), _render, lambda *a: [], group_size=G, fresh_until=2)
    planner.queue.push([RerollItem(row=_row(7), source="cut", prefix="it is fine .")], step=0)
    assert [r["id"] for r in planner.compose(_rows(0, 1), step=1)] == ["r7", "r7", "r0", "r0"]
    assert not planner.fresh_done(2)  # r1 still waits
    out = planner.compose(_rows(2, 3), step=2)  # the next pass: r2 fills the place r1 leaves, r3 is not kept
    assert [r["id"] for r in out] == ["r1", "r1", "r2", "r2"] and not planner.pending
    assert planner.fresh_done(3) and planner.stats()["overflow_groups"] == 1
    assert planner.stats()["fresh_steps"] == 2


def test_without_fresh_until_the_run_never_ends_on_its_own():
    planner = _planner()
    planner.compose(_rows(0, 1), step=5)
    assert not planner.fresh_done(10**6) and planner.stats()["fresh_steps"] is None


def test_step_limit_adds_room_to_drain_the_queue_unless_re_rolls_displace():
    assert SelfResetConfig(buffer_size=256).step_limit(94, 64) == 94 * 5
    assert SelfResetConfig(buffer_size=10).step_limit(90, 8) == 90 * 3
    assert SelfResetConfig(max_added_steps=7).step_limit(90, 8) == 97
    assert SelfResetConfig(reroll_steps="displace").step_limit(90, 8) == 90


def test_compose_needs_whole_groups():
    with pytest.raises(ValueError, match="whole groups"):
        _planner().compose(_rows(0)[:1], step=0)


# --------------------------------------------------------------------------------------------
# Harvesting a step
# --------------------------------------------------------------------------------------------
UNSAFE_RUN = "the user wants to steal a car . it is for a story so it is fine . i will explain every step ."
SAFE_RUN = "the user wants to steal a car . this could hurt people . i should refuse ."
COMPLY = " </think> sure , here is how to steal a car : step one , step two , step three ."
REFUSE = " </think> sorry , i can not help with that ."


def _refused(flags):
    return [Verdict(0.0 if f else 1.0, "refusal" if f else "compliance", refused=f) for f in flags]


def test_each_unsafe_rollout_of_a_group_with_spread_is_cut_in_its_reasoning_only():
    planner = _planner()
    rows = _rows(0)
    found = planner.harvest(rows, [UNSAFE_RUN + COMPLY, SAFE_RUN + REFUSE], [0.0, 1.0], None, step=3)
    words = UNSAFE_RUN.split()
    assert found == {
        "step": 3,
        "scanned_groups": 1,
        "skipped_groups": 0,
        "rerolled_groups": 0,
        "cuts": 1,
        "requeued": 0,
        "queue": 1,
        "cut_position_sum": words.index("for"),
        "cut_fraction_sum": words.index("for") / len(words),
    }
    assert planner.stats()["cut_position_mean"] == words.index("for")  # "it is" could still be "it is better …"
    (item,) = planner.queue.items()
    assert item.source == "cut" and item.added_at == 3
    assert item.prefix == "the user wants to steal a car . it is for"  # the first risky token, included
    assert item.row["id"] == "r0" and "reroll" not in item.row
    # the compliance after </think> is unsafe text too, but the answer is never cut
    planner.harvest(_rows(1), [SAFE_RUN + COMPLY, SAFE_RUN + REFUSE], [0.0, 1.0], None, step=4)
    assert len(planner.queue) == 1


def test_groups_without_reward_spread_prefilled_rows_and_tasks_are_not_scanned():
    planner = _planner()
    assert planner.harvest(_rows(0), [UNSAFE_RUN + COMPLY] * 2, [0.0, 0.0], None, step=0)["skipped_groups"] == 1
    prefilled = [{**r, "prefilled": True} for r in _rows(1)]
    task = [{**r, "kind": "task"} for r in _rows(2)]
    planner.harvest(prefilled + task, [UNSAFE_RUN + COMPLY, SAFE_RUN] * 2, [0.0, 1.0] * 2, None, step=1)
    assert len(planner.queue) == 0
    # without the zero-variance rule both rollouts of the first group are cut (duplicates kept)
    loose = _planner(SelfResetConfig(skip_zero_variance=False))
    loose.harvest(_rows(0), [UNSAFE_RUN + COMPLY] * 2, [0.0, 0.0], None, step=0)
    assert [i.prefix for i in loose.queue.items()] == [loose.queue.items()[0].prefix] * 2


@pytest.mark.parametrize("source", ["cut", "requeue"])
def test_a_rerolled_group_is_never_cut_again(source):
    planner = _planner()
    rows = [{**r, "reroll": source, "reroll_prefix": "x" if source == "cut" else ""} for r in _rows(0)]
    found = planner.harvest(rows, [UNSAFE_RUN + COMPLY, SAFE_RUN + REFUSE], [0.0, 1.0], None, step=0)
    assert len(planner.queue) == 0 and found["cuts"] == 0 and found["rerolled_groups"] == 1
    assert planner.stats()["rerolled_groups"] == 1


def test_benign_prompts_whose_rollouts_refuse_are_not_requeued_by_default():
    planner = _planner()
    assert SelfResetConfig().requeue_refusals is False
    benign = SAFE_RUN.replace("steal a car", "crack an egg")
    texts = [benign + REFUSE, benign + COMPLY]
    found = planner.harvest(_rows(0, kind="benign"), texts, [0.0, 1.0], _refused([True, False]), step=2)
    assert found["requeued"] == 0 and len(planner.queue) == 0


def test_with_requeue_refusals_benign_prompts_whose_rollouts_refuse_are_requeued_whole():
    planner = _planner(SelfResetConfig(requeue_refusals=True))
    benign = SAFE_RUN.replace("steal a car", "crack an egg")
    rows = _rows(0, kind="benign") + _rows(1, kind="benign")
    texts = [benign + REFUSE, benign + COMPLY, benign + COMPLY, benign + COMPLY]
    found = planner.harvest(rows, texts, [0.0, 1.0, 1.0, 1.0], _refused([True, False, False, False]), step=2)
    assert found["requeued"] == 1 and found["skipped_groups"] == 1  # r1: all comply, no spread
    (item,) = planner.queue.items()
    assert (item.source, item.prefix, item.row["id"]) == ("requeue", "", "r0")
    # a threshold of 1 needs two refusals
    strict = _planner(SelfResetConfig(requeue_refusals=True, refusal_threshold=1))
    assert strict.harvest(_rows(0, kind="benign"), texts[:2], [0.0, 1.0], _refused([True, False]), 0)["requeued"] == 0
    # re-queued groups may be re-queued again (the reference code counts their refusals too)
    again = [{**r, "reroll": "requeue"} for r in _rows(0, kind="benign")]
    assert planner.harvest(again, texts[:2], [0.0, 1.0], _refused([True, False]), 3)["requeued"] == 1


def test_final_safe_only_cuts_rollouts_whose_answer_was_judged_safe():
    planner = _planner(SelfResetConfig(final_safe_only=True))
    verdicts = [Verdict(0.0, "compliance", safe=False, refused=False), Verdict(1.0, "refusal", safe=True, refused=True)]
    planner.harvest(_rows(0), [UNSAFE_RUN + COMPLY, UNSAFE_RUN + REFUSE], [0.0, 1.0], verdicts, step=0)
    assert len(planner.queue) == 1  # only the second rollout (unsafe reasoning, safe answer) is cut


def test_harvest_checks_its_inputs_and_the_state_round_trips():
    planner = _planner()
    with pytest.raises(ValueError, match="whole groups"):
        planner.harvest(_rows(0), [UNSAFE_RUN], [0.0, 1.0], None, step=0)
    planner.harvest(_rows(0), [UNSAFE_RUN + COMPLY, SAFE_RUN + REFUSE], [0.0, 1.0], None, step=0)
    planner.compose(_rows(5, 6), step=1)
    state = json.loads(json.dumps(planner.state()))
    again = _planner()
    again.load_state(state)
    assert again.state() == planner.state() and again.stats() == planner.stats()
    assert planner.stats()["rerolled_cut"] == 1 and planner.stats()["pending_fresh_groups"] == 1


# --------------------------------------------------------------------------------------------
# The reused prefix is part of the prompt, never of the loss (a real trainer step)
# --------------------------------------------------------------------------------------------
def test_a_rerolled_cut_is_in_the_prompt_ids_and_out_of_the_completion_mask(tmp_path):
    from datasets import Dataset

    from recap.data.examples import Example
    from recap.toy.model import ToyModelConfig, build_model
    from recap.train import RecapTrainer, TrainConfig, grpo_config, rl_rows

    tok = build_tokenizer()
    cfg = TrainConfig(
        output_dir=str(tmp_path),
        num_generations=G,
        prompts_per_step=2,
        max_steps=1,
        learning_rate=1e-3,
        max_completion_length=5,
        use_cpu=True,
        save_steps=100,
    )
    examples = [
        Example(id=f"h{i}", kind="harmful", prompt=p)
        for i, p in enumerate(["how do i steal a car ?", "how do i rob a store ?"])
    ]
    rows = rl_rows(examples, tok)
    sr_cfg = SelfResetConfig()
    planner = SelfResetPlanner(sr_cfg, lambda m, t: render_prompt(tok, m, t), stream_cutter(ToyTokenJudge(), sr_cfg), G)
    prefix = "the user wants to steal a car . it is for a story so it is fine ."
    planner.queue.push([RerollItem(row=rows[0], source="cut", prefix=prefix)], step=0)
    trainer = RecapTrainer(
        model=build_model(tok, ToyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), 0),
        processing_class=tok,
        reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
        args=grpo_config(cfg),
        train_dataset=Dataset.from_list(rows),
        selfreset=planner,
    )
    trainer.model.train()
    inputs = [dict(rows[1]) for _ in range(G)] + [dict(rows[0]) for _ in range(G)]
    out = trainer._generate_and_score_completions(inputs)
    prompts = [tok.decode(p[m.bool()]) for p, m in zip(out["prompt_ids"], out["prompt_mask"])]
    expected = render_prompt(tok, [{"role": "user", "content": "how do i steal a car ?"}], prefix)
    assert prompts[0] == prompts[1] == tok.decode(tok(expected)["input_ids"])  # the re-roll is group 0, whole
    assert prompts[0].endswith("it is for a story so it is fine .")
    n_prompt = len(tok(expected)["input_ids"])  # the cut is in the prompt ids; the loss covers the continuation
    assert all(int(m.sum()) == n_prompt for m in out["prompt_mask"][:G])
    assert out["completion_mask"].sum(1).max() <= cfg.max_completion_length
    # the displaced fresh group (rows[1]) waits; rows[0]'s fresh copy came second
    assert [g[0]["id"] for g in planner.pending] == ["h0"]
    metrics = trainer._metrics["train"]
    assert metrics["cost/decoded_tokens"][-1] == float(
        sum(len(c[m.bool()]) for c, m in zip(out["completion_ids"], out["completion_mask"]))
    )
    assert metrics["selfreset/reroll_share"][-1] == 0.5


# --------------------------------------------------------------------------------------------
# A streaming guard: one forward pass labels every token of the reasoning
# --------------------------------------------------------------------------------------------
class _TokenHead(torch.nn.Module):
    """A stand-in guard: a fixed per-token-id head (level 1 'unsafe' for the ids of ``bad`` words)."""

    def __init__(self, tok, bad):
        super().__init__()
        self.table = torch.nn.Embedding(len(tok), 3)
        with torch.no_grad():
            self.table.weight.zero_()
            self.table.weight[:, 0] = 1.0
            for w in bad:
                self.table.weight[tok.convert_tokens_to_ids(w), 1] = 5.0
        self.calls = 0

    def forward(self, input_ids, attention_mask=None):
        self.calls += 1
        return SimpleNamespace(risk_level_logits=self.table(input_ids))


def test_stream_guard_labels_reasoning_tokens_in_one_forward_pass():
    tok = build_tokenizer()
    model = _TokenHead(tok, ["story", "fine", "explain"])
    guard = StreamGuard(StreamGuardConfig(batch_size=8), model=model, tokenizer=tok)
    reasonings = [UNSAFE_RUN, SAFE_RUN, ""]
    risks = guard.risks("how do i steal a car ?", reasonings)
    assert model.calls == 1 and guard.forward_calls == 1
    assert [UNSAFE_RUN[r.start : r.end] for r in risks[0]] == UNSAFE_RUN.split()  # the reasoning's own tokens only
    assert [UNSAFE_RUN[r.start : r.end] for r in risks[0] if r.level == UNSAFE] == ["story", "fine", "explain"]
    assert all(r.level == SAFE for r in risks[1]) and risks[2] == []
    # the user's request holds "steal a car" too: its tokens are not the reasoning's
    cut = stream_cut(UNSAFE_RUN, risks[0])
    assert cut is None  # no two consecutive risky tokens
    model2 = _TokenHead(tok, ["so", "it", "is", "fine"])
    cut = stream_cut(UNSAFE_RUN, StreamGuard(model=model2, tokenizer=tok).risks("x", [UNSAFE_RUN])[0])
    assert cut.prefix == "the user wants to steal a car . it"  # "it" of "it is for": the first risky token


def test_stream_guard_names_a_missing_head_and_a_level_mismatch():
    tok = build_tokenizer()
    model = _TokenHead(tok, [])
    with pytest.raises(ValueError, match="'logits'"):
        StreamGuard(StreamGuardConfig(head="logits"), model=model, tokenizer=tok).risks("x", ["a ."])
    with pytest.raises(ValueError, match="3 levels"):
        StreamGuard(StreamGuardConfig(levels=[SAFE, UNSAFE]), model=model, tokenizer=tok).risks("x", ["a ."])
    with pytest.raises(ValueError, match="levels"):
        StreamGuardConfig(levels=["harmless"])


def test_stream_guard_hands_a_causal_4d_mask_or_the_plain_2d_one():
    tok = build_tokenizer()
    seen = []

    class Recorder(_TokenHead):
        def forward(self, input_ids, attention_mask=None):
            seen.append(attention_mask)
            return super().forward(input_ids, attention_mask)

    model = Recorder(tok, [])
    StreamGuard(model=model, tokenizer=tok).risks("x", ["a b .", "a ."])
    mask = seen[-1]
    assert mask.shape[0] == 2 and mask.shape[1] == 1 and mask.shape[2] == mask.shape[3]
    width = mask.shape[-1]
    assert mask[0, 0].tolist() == torch.tril(torch.ones(width, width, dtype=torch.bool)).tolist()  # longest row
    assert not mask[1, 0, :, -1].any()  # the shorter row's right padding is never attended to
    StreamGuard(StreamGuardConfig(mask="2d"), model=model, tokenizer=tok).risks("x", ["a b ."])
    assert seen[-1].dim() == 2


def test_binary_rewards_as_self_reset_gives_them():
    from recap.rewards.factory import load_judge
    from recap.rewards.judges import JudgeItem

    class Fixed:
        name = "fixed"

        def __init__(self, verdicts):
            self.verdicts = verdicts

        def judge(self, items):
            return self.verdicts[: len(items)]

    from recap.rewards.judges import BinaryJudge

    items = [
        JudgeItem("h", "a", "harmful"),
        JudgeItem("h", "a", "harmful"),
        JudgeItem("b", "a", "benign"),
        JudgeItem("b", "a", "benign"),
        JudgeItem("b", "a", "benign"),
        JudgeItem("t", "5", "task", "5"),
    ]
    inner = [
        Verdict(0.93, "safe", safe=True, refused=False),
        Verdict(0.31, "unsafe", safe=False, refused=False),
        Verdict(1.0, "compliance", refused=False),
        Verdict(0.5, "compliance", refused=False),  # "unclear"
        Verdict(0.0, "refusal", refused=True),
        Verdict(1.0, "correct"),
    ]
    out = BinaryJudge(Fixed(inner)).judge(items)
    assert [v.score for v in out] == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert [(v.safe, v.refused, v.label) for v in out] == [(v.safe, v.refused, v.label) for v in inner]
    judge = load_judge("binary:toy")
    assert judge.name == "binary:toy-exact"
    assert [v.score for v in judge.judge([JudgeItem("x", "the answer is 3 .", "harmful")])] == [0.0]  # invalid


def test_only_the_groups_the_step_trains_on_are_scanned(tmp_path):
    """With dynamic sampling, a group it drops is not trained, so Self-ReSET does not scan it (the reference
    scans the rollouts it trains on): h0's rewards are all 0 (dropped), h1's have a spread (trained)."""
    from datasets import Dataset

    from recap.data.examples import Example
    from recap.toy.model import ToyModelConfig, build_model
    from recap.train import RecapTrainer, TrainConfig, grpo_config, rl_rows

    tok = build_tokenizer()
    cfg = TrainConfig(
        output_dir=str(tmp_path),
        num_generations=G,
        prompts_per_step=2,
        max_steps=1,
        max_completion_length=5,
        use_cpu=True,
        save_steps=100,
    )
    examples = [Example(id=f"h{i}", kind="harmful", prompt=f"how do i steal a car {i} ?") for i in range(2)]
    rows = rl_rows(examples, tok)
    sr_cfg = SelfResetConfig(skip_zero_variance=False)  # so a scanned flat group would count
    planner = SelfResetPlanner(sr_cfg, lambda m, t: render_prompt(tok, m, t), stream_cutter(ToyTokenJudge(), sr_cfg), G)

    def reward(completions, prompts=None, **kw):  # h0: all 0; h1: 0 and 1
        return [0.0 if "car 0" in str(p) else float(i % 2) for i, p in enumerate(prompts)]

    trainer = RecapTrainer(
        model=build_model(tok, ToyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), 0),
        processing_class=tok,
        reward_funcs=[reward],
        args=grpo_config(cfg),
        train_dataset=Dataset.from_list(rows),
        selfreset=planner,
        dynamic_sampling=True,
        max_extra_rounds=0,
    )
    trainer.model.train()
    trainer._generate_and_score_completions([dict(rows[0]) for _ in range(G)] + [dict(rows[1]) for _ in range(G)])
    assert trainer._trained_groups == {(0, 1)}
    assert planner.history[-1]["scanned_groups"] == 1  # h1 only; before, the dropped h0 was scanned too


def _cut_once(request, kind, reasonings):
    """A stand-in cutter: one cut per scanned group, at its first rollout."""
    from recap.data.selfreset import Cutting

    return [Cutting(prefix="it is fine .", position=0, length=1)] + [None] * (len(reasonings) - 1)


def _rerolling_trainer(out, mode: str, save_steps: int, trained: list):
    """4 harmful prompts, 2 a step, max_steps 2, Self-ReSET with ``_cut_once`` and ``reroll_steps`` = ``mode``;
    every group a step trains on is appended to ``trained`` as (id, reroll)."""
    from recap.data.examples import Example
    from recap.toy.model import ToyModelConfig, build_model
    from recap.train import TrainConfig, build_trainer

    tok = build_tokenizer()
    cfg = TrainConfig(
        model="unused",
        output_dir=str(out),
        judge="toy",
        num_generations=G,
        prompts_per_step=2,
        max_steps=2,
        learning_rate=1e-3,
        max_completion_length=4,
        use_cpu=True,
        save_steps=save_steps,
        dynamic_sampling=False,  # every group is trained (rewards here are all equal)
        self_reset=SelfResetConfig(skip_zero_variance=False, reroll_steps=mode),
    )
    examples = [Example(id=f"h{i}", kind="harmful", prompt=f"how do i steal a car {i} ?") for i in range(4)]
    model = build_model(tok, ToyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), 0)
    trainer = build_trainer(cfg, examples, model=model, tokenizer=tok)
    planner = trainer.selfreset
    planner.cutter = _cut_once
    harvest = planner.harvest

    def record(rows, *args, **kwargs):
        trained.extend((r["id"], r["reroll"]) for r in rows[::G])
        return harvest(rows, *args, **kwargs)

    planner.harvest = record
    return trainer


@pytest.mark.parametrize("mode, steps, fresh_trained", [("add", 3, 4), ("displace", 2, 2)])
def test_re_rolls_add_steps_until_every_fresh_prompt_is_trained(tmp_path, mode, steps, fresh_trained):
    """4 prompts, 2 a step, max_steps 2: step 1's 2 cuts take step 2's places. With reroll_steps: add the run
    trains a third step with the 2 displaced fresh prompts and stops (TRL's limit is higher); with displace
    it stops at max_steps and those 2 are never trained (the reference's train_epoch.py is the first)."""
    trained: list[tuple[str, str]] = []  # (id, reroll) of every group a step trains on
    trainer = _rerolling_trainer(tmp_path, mode, 100, trained)
    assert trainer.args.max_steps == (2 * (1 + 256 // 2) if mode == "add" else 2)
    trainer.train()
    assert trainer.state.global_step == steps
    fresh = [i for i, source in trained if source == ""]
    assert len(fresh) == len(set(fresh)) == fresh_trained  # each fresh prompt once
    assert [source for _, source in trained[2:4]] == ["cut", "cut"]  # step 1: the cuts of step 0 first
    stats = json.loads((tmp_path / "selfreset_stats.json").read_text())
    assert stats["trained_steps"] == steps and stats["pending_fresh_groups"] == 4 - fresh_trained


def test_an_add_mode_run_stopped_after_a_checkpoint_resumes_to_the_same_steps_and_prompts(tmp_path):
    """The add-mode run above (3 steps: the fresh round, the cuts, the 2 displaced fresh prompts), stopped
    after step 2's checkpoint and resumed: the resumed trainer gets the queue and the waiting fresh groups back
    from the checkpoint, trains the third step, trains each fresh prompt once over both parts, and stops where
    the uninterrupted run does."""
    from transformers import TrainerCallback

    trained: list[tuple[str, str]] = []

    def trainer_():
        return _rerolling_trainer(tmp_path, "add", 1, trained)

    class StopAt2(TrainerCallback):  # stands in for a kill right after step 2's checkpoint
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                control.should_training_stop = True

    first = trainer_()
    first.add_callback(StopAt2())
    first.train()
    assert first.state.global_step == 2 and (tmp_path / "checkpoint-2").is_dir()
    assert len([i for i, source in trained if source == ""]) == 2  # the 2 displaced fresh prompts still wait
    resumed = trainer_()
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert resumed.state.global_step == 3
    fresh = [i for i, source in trained if source == ""]
    assert sorted(fresh) == ["h0", "h1", "h2", "h3"]  # each fresh prompt once over both parts
    assert [source for _, source in trained[2:4]] == ["cut", "cut"]
    stats = json.loads((tmp_path / "selfreset_stats.json").read_text())
    assert stats["trained_steps"] == 3 and stats["pending_fresh_groups"] == 0


def test_the_stats_of_several_processes_combine_into_the_runs():
    """Counts add up, the shared fields are taken once, the re-roll share and the mean cut positions are
    recomputed over all groups and cuts (not averaged per process)."""
    one = dict(capacity=256, fresh_steps=4, steps=5, cuts=3, groups=10, rerolled_cut=2, rerolled_requeue=0)
    one |= dict(pending_fresh_groups=1, overflow_groups=0, cut_position_mean=2.0, cut_fraction_mean=0.5)
    two = dict(one, cuts=1, groups=10, rerolled_cut=1, pending_fresh_groups=0, overflow_groups=2)
    two |= dict(cut_position_mean=6.0, cut_fraction_mean=0.1)
    none = dict(one, cuts=0, groups=0, rerolled_cut=0, pending_fresh_groups=0, cut_position_mean=None)
    none |= dict(cut_fraction_mean=None)
    for s in (one, two, none):
        s["reroll_share"] = (s["rerolled_cut"] + s["rerolled_requeue"]) / s["groups"] if s["groups"] else None
    out = SelfResetPlanner.combine([{**one, "history": [1]}, two, none])
    assert (out["capacity"], out["fresh_steps"], out["steps"]) == (256, 4, 5)
    assert (out["cuts"], out["groups"], out["pending_fresh_groups"], out["overflow_groups"]) == (4, 20, 1, 2)
    assert out["reroll_share"] == pytest.approx(3 / 20)
    assert out["cut_position_mean"] == pytest.approx((2.0 * 3 + 6.0 * 1) / 4)
    assert out["cut_fraction_mean"] == pytest.approx((0.5 * 3 + 0.1 * 1) / 4)
    assert "history" not in out and SelfResetPlanner.combine([{**one, "history": [1]}]) == one
