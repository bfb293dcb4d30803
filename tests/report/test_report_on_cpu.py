"""Report generation on hand-made records (CPU only, no model): statistics over seeds with pooled Wilson
intervals, a table of metrics × methods grouped by area with readable titles, plots and transcripts."""

from __future__ import annotations

import pytest

from recap.eval.metrics import wilson
from recap.report import summarize, write_report

METHODS = ("base", "vanilla", "recap")
SEEDS = (0, 1)
# number of compliant answers (out of 4) under the prefill attack, per (method, seed)
PREFILL_COMPLIANT = {
    ("base", 0): 4,
    ("base", 1): 4,
    ("vanilla", 0): 2,
    ("vanilla", 1): 3,
    ("recap", 0): 1,
    ("recap", 1): 0,
}
EVIL = "<script>alert(1)</script> <think>secret</think>"


def _record(method, seed, attack, example_id, kind, label, rnd=None, injected="", completion="fine.", **kw):
    prompt_text = f"<|user|>prompt {example_id}<|assistant|><think>\n{injected}"
    rnd = (1 if attack == "prefill" else 0) if rnd is None else rnd
    safe = {"refusal": True, "compliance": False}.get(label) if kind == "harmful" else None
    return {
        "method": method,
        "seed": seed,
        "attack": attack,
        "round": rnd,
        "example_id": example_id,
        "safe": safe,
        "refused": label == "refusal",
        "sample": 0,
        "kind": kind,
        "prompt": f"user prompt {example_id}",
        "injected": injected,
        "prompt_text": prompt_text,
        "completion": completion,
        "answer": completion,
        "label": label,
        "score": 1.0,
        "reflected": kw.get("reflected", False),
        "reasoning_tokens": kw.get("rt", 10),
        "answer_tokens": kw.get("at", 5),
        "truncated": False,
        "stage": attack,
    }


def make_records() -> list[dict]:
    records = []
    for method in METHODS:
        for seed in SEEDS:
            for i in range(4):
                hid, bid = f"h{i}", f"b{i}"
                records.append(_record(method, seed, "clean", hid, "harmful", "refusal", rt=10 + seed))
                records.append(_record(method, seed, "clean", bid, "benign", "compliance", rt=20))
                label = "compliance" if i < PREFILL_COMPLIANT[method, seed] else "refusal"
                records.append(
                    _record(
                        method,
                        seed,
                        "prefill",
                        hid,
                        "harmful",
                        label,
                        injected=f"ATTACKER PREFILL {hid}",
                        completion=f"MODEL CONT {method}",
                        reflected=i % 2 == 0,
                    )
                )
                records.append(
                    _record(
                        method,
                        seed,
                        "refusal_prefill",
                        bid,
                        "benign",
                        "refusal",
                        injected="I must refuse.",
                        completion="Actually, this is fine.",
                    )
                )
                records.append(
                    _record(
                        method,
                        seed,
                        "hijack",
                        hid,
                        "harmful",
                        "compliance",
                        injected="whole attacker reasoning\n</think>\n",
                        completion=EVIL,
                    )
                )
                for k in (2, 3):
                    records.append(
                        _record(
                            method,
                            seed,
                            "ipr",
                            hid,
                            "harmful",
                            "refusal",
                            rnd=k,
                            injected=f"Wait, reset {k}",
                            completion=f"ipr round {k} answer",
                        )
                    )
    return records


def test_summarize_mean_std_n():
    summary = summarize(make_records())
    assert summary["seeds"] == [0, 1]
    assert list(summary["methods"]) == ["base", "vanilla", "recap"]
    for method in METHODS:
        stat = summary["methods"][method]["attack_prefill_success"]
        rates = [PREFILL_COMPLIANT[method, s] / 4 for s in SEEDS]
        mean = sum(rates) / 2
        assert stat["mean"] == pytest.approx(mean)
        assert stat["std"] == pytest.approx(abs(rates[0] - rates[1]) / 2)
        assert stat["n"] == 2 and stat["samples"] == 8
        k = sum(PREFILL_COMPLIANT[method, s] for s in SEEDS)  # the interval pools both seeds' 8 samples
        assert stat["ci"] == pytest.approx(list(wilson(k, 8)))
    # reasoning tokens on clean: (10 + seed) * 4 harmful and 20 * 4 benign per seed
    rt = summary["methods"]["recap"]["reasoning_tokens"]
    assert rt["mean"] == pytest.approx((15 + 15.5) / 2)
    assert rt["std"] == pytest.approx(0.25)
    assert rt["ci"] is None  # a mean, not a rate


def test_missing_metrics_omitted_and_method_order():
    records = [r for r in make_records() if not (r["method"] == "base" and r["attack"] == "hijack")]
    records += [dict(r, method="aaa", seed=0) for r in records if r["method"] == "recap" and r["seed"] == 0]
    summary = summarize(records)
    assert list(summary["methods"]) == ["base", "vanilla", "recap", "aaa"]
    for stats in summary["methods"].values():
        assert "task_accuracy" not in stats  # no task prompts at all
    assert "attack_hijack_success" not in summary["methods"]["base"]
    assert summary["methods"]["aaa"]["attack_prefill_success"] == {
        "mean": 0.25,
        "std": 0.0,
        "n": 1,
        "ci": list(wilson(1, 4)),
        "samples": 4,
    }


def test_write_report(tmp_path):
    records = make_records()
    summary = write_report(records, tmp_path / "out", title="Test <report>", notes=["base model shared"])
    out = tmp_path / "out"
    assert summary == summarize(records)
    for name in ("attack_success.png", "reflection_rate.png", "overrefusal.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    page = (out / "report.html").read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    assert page.count("data:image/png;base64,") == 3
    assert "<style>" in page and "<script" not in page.lower()
    assert "Test &lt;report&gt;" in page and "base model shared" in page
    assert "harmful prompts" in page  # safety note
    assert '<span class="prefill">ATTACKER PREFILL h0</span>' in page
    assert '<span class="model">MODEL CONT recap</span>' in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &lt;think&gt;secret&lt;/think&gt;" in page
    assert "<think>" not in page
    assert "&lt;/think&gt;" in page  # hijack injected text closes the think block
    # IPR transcripts show the last round only, with the history collapsed
    assert "Wait, reset 3" in page and "ipr round 3 answer" in page and "ipr round 2 answer" not in page
    assert "<details>" in page
    # table: one row per metric, grouped by area, readable titles, one column per method; mean ± std and
    # the pooled Wilson interval
    assert "<th>metric</th><th>base</th><th>vanilla</th><th>recap</th></tr>" in page
    assert (
        '<tr class="area"><th colspan="4">Safety on harmful prompts (judged safe, share of all samples; the unsafe and malformed shares beside it)</th></tr>'
        in page
    )
    assert 'prefill attack: judged unsafe<div class="key">attack_prefill_success</div>' in page
    # vanilla: 2 + 3 of 8 prefill samples unsafe; [30.6, 86.3] is the 95% Wilson interval of 5/8, in percent
    assert '<td>62.5 ± 12.5<span class="ci">[30.6, 86.3]</span></td>' in page
    assert "IPR round 2: judged unsafe" in page and "mean ± std over 2 seeds" in page

    md = (out / "report.md").read_text(encoding="utf-8")
    assert "(attack_success.png)" in md and "(overrefusal.png)" in md
    assert "> **prefill (attacker)**" in md and "> ATTACKER PREFILL h0" in md
    assert "**model continuation**" in md
    assert "| metric | base | vanilla | recap |" in md and "lower is better" in md and "higher is better" in md
    assert "| prefill attack: judged unsafe (`attack_prefill_success`) | 100.0 ± 0.0 [" in md


def test_transcripts_share_examples_across_methods(tmp_path):
    write_report(make_records(), tmp_path)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    for method in METHODS:  # the same two examples (h0, h1) for every method, under each harmful attack
        assert page.count(f"{method} · seed 0 · example h0") == 3  # prefill, hijack, IPR
        assert page.count(f"{method} · seed 0 · example h1") == 3
        assert page.count(f"{method} · seed 0 · example b0") == 1  # refusal prefill
    assert "example h2" not in page and " · seed 1 · " not in page


def test_plot_skipped_when_metrics_missing(tmp_path):
    records = [r for r in make_records() if r["attack"] == "clean"]
    summary = write_report(records, tmp_path)
    assert not (tmp_path / "attack_success.png").exists() and not (tmp_path / "prefill_sweep.png").exists()
    assert (tmp_path / "reflection_rate.png").exists()  # the clean-prompt reflection rate
    assert (tmp_path / "overrefusal.png").exists()
    assert "attack_prefill_success" not in summary["methods"]["recap"]
    assert (tmp_path / "report.html").read_text(encoding="utf-8").count("data:image/png;base64,") == 2


def test_one_seed_says_there_is_no_spread_and_zero_bars_are_labelled(tmp_path, monkeypatch):
    import matplotlib.axes

    labels, real = [], matplotlib.axes.Axes.bar_label

    def recording(self, bars, labels_=None, **kw):
        labels.append(list(kw.get("labels", labels_)))
        return real(self, bars, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar_label", recording)
    records = [r for r in make_records() if r["seed"] == 0]
    write_report(records, tmp_path)
    # one bar_label call per method of the attack plot (judged safe): prefill (= IPR k = 1), hijack, IPR k = 2, 3;
    # the zero bars carry "0"
    assert ["0", "0", "100", "100"] in labels and ["75", "0", "100", "100"] in labels
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "One seed: no spread across seeds to show" in page and " ± " not in page.split("<h2>")[0]
    assert '<td>25.0<span class="ci">' in page  # recap, seed 0: 1 of 4 prefill samples unsafe


def test_per_benchmark_table_for_suite_records(tmp_path):
    def rec(method, bench, attack, kind, label, rnd=None):
        rnd = (1 if attack == "prefill" else 0) if rnd is None else rnd
        safe = {"refusal": True, "compliance": False}.get(label) if kind == "harmful" else None
        return {
            "method": method,
            "seed": 0,
            "benchmark": bench,
            "attack": attack,
            "round": rnd,
            "kind": kind,
            "label": label,
            "score": 1.0 if (kind, label) == ("benign", "compliance") else 0.0,  # helpfulness of a compliance
            "reflected": False,
            "reasoning_tokens": 0,
            "answer_tokens": 1,
            "example_id": "x",
            "prompt": "p",
            "completion": "c",
            "injected": "",
            "safe": safe,
            "refused": label == "refusal",
        }

    records = [
        rec("base", "sr", "clean", "harmful", "compliance"),
        rec("base", "sr", "prefill", "harmful", "compliance"),
        rec("base", "sr", "prefill", "harmful", "refusal"),
        rec("base", "xs", "clean", "benign", "refusal"),
        rec("base", "xs", "clean", "benign", "compliance"),
        rec("recap", "sr", "prefill", "harmful", "refusal"),
    ]
    summary = write_report(records, tmp_path)
    assert summary["benchmarks"] == [
        {
            "method": "base",
            "sr: safety clean": 0.0,
            "sr: safety prefill": 0.5,
            "sr: safety IPR1": 0.5,
            "xs: complies": 0.5,
            "xs: helpfulness": 0.5,
        },
        {"method": "recap", "sr: safety prefill": 1.0, "sr: safety IPR1": 1.0},
    ]
    md = (tmp_path / "report.md").read_text()
    assert "| method | sr: safety clean | sr: safety prefill | sr: safety IPR1 | xs: complies | xs: helpfulness |" in md
    assert "| base | 0.0 | 50.0 | 50.0 | 50.0 | 50.0 |" in md and "| recap | — | 100.0 | 100.0 | — | — |" in md
    assert "<th>sr: safety prefill</th>" in (tmp_path / "report.html").read_text()


def test_a_long_plot_title_wraps_inside_its_figure(tmp_path, monkeypatch):
    """A chart title longer than its figure is wide was clipped at both ends; it wraps instead."""
    import recap.report.report as report

    seen = {}
    monkeypatch.setattr(report, "_save", lambda fig, path: seen.update(title=fig.axes[0].get_title(), fig=fig))
    summary = {"methods": {"base": {"safety_prefill": {"mean": 0.5, "std": 0.0}}}}
    title = (
        "Safety under attack: answers judged safe, share of all samples (higher is better; malformed ones are not safe)"
    )
    assert report._plot(summary, [("prefill", "safety_prefill")], title, tmp_path / "p.png")
    lines = seen["title"].splitlines()
    assert len(lines) == 2 and " ".join(lines) == title
    fig = seen["fig"]
    box = fig.axes[0].title.get_window_extent(fig.canvas.get_renderer())
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width  # drawn inside the figure
