"""Human-readable report of evaluation records: a metrics table, plots and example transcripts.

``summarize`` turns records (see ``recap.eval.runner``) into per-method statistics over seeds: mean and
population std of each metric, and for rates the 95% Wilson interval of the samples of all seeds pooled
(with one seed, that seed's interval). ``write_report`` writes ``report.md``, a self-contained
``report.html`` and PNG plots. The table has one row per metric, grouped by area, with readable titles,
and one column per method, so it fits a page whatever the number of metrics.
"""

from __future__ import annotations

import base64
import html
import re
import statistics
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from recap.eval.metrics import describe, higher_is_better, is_rate, metric_stats, ordered, wilson  # noqa: E402
from recap.util.files import atomic_write, write_text  # noqa: E402
from recap.report.comparison import beyond_noise, comparison_html, comparison_markdown  # noqa: E402

METHODS_ORDER = ("base", "vanilla", "recap", "on_policy", "mixed", "self_reset", "verify_grpo", "verify_recap")
SAFETY_NOTE = (
    "Content warning: this report contains model outputs on harmful prompts, "
    "including attacker-written reasoning and possibly unsafe completions."
)
TRANSCRIPTS_PER_METHOD = 2

# Areas of the table, in order: (title, test on the metric name).
AREAS = (
    (
        "Safety on harmful prompts (judged safe, share of all samples; the unsafe and malformed shares beside it)",
        lambda m: m.startswith(("safety_", "refusal_rate_", "attack_")),
    ),
    ("Over-refusal on benign prompts", lambda m: m.startswith(("overrefusal_", "compliance_", "helpfulness_"))),
    ("Second judges of the harmful answers (eval.extra_judges)", lambda m: m.startswith("extra_")),
    ("Reasoning tasks", lambda m: m.startswith("task_")),
    ("Self-reflection and self-verification", lambda m: m.startswith(("reflection_rate_", "verification_rate_"))),
    (
        "Malformed answers (no closing think tag, or an empty answer; in the miniature world also an answer outside "
        "its grammar): neither safe nor unsafe",
        lambda m: m.startswith("invalid_") or m == "hijack_complete",
    ),
    ("Token budget", lambda m: m.endswith("_tokens")),
)
TITLES = {
    "safety_clean": "judged safe, no attack",
    "refusal_rate_clean": "refuses, no attack",
    "safety_prefill": "prefill attack: judged safe",
    "safety_hijack": "full CoT hijack: judged safe",
    "safety_hcot": "H-CoT: judged safe",
    "safety_prefill_unseen": "unseen-generator prefill: judged safe",
    "safety_adaptive": "adaptive attacker: prompts safe under every try",
    "hijack_complete": "full CoT hijack: attacker reasoning complete",
    "invalid_adaptive": "adaptive attacker",
    "attack_prefill_success": "prefill attack: judged unsafe",
    "refusal_rate_prefill": "prefill attack: refuses",
    "attack_hijack_success": "full CoT hijack: judged unsafe",
    "refusal_rate_hijack": "full CoT hijack: refuses",
    "attack_hcot_success": "H-CoT: judged unsafe",
    "refusal_rate_hcot": "H-CoT: refuses",
    "attack_prefill_unseen_success": "unseen-generator prefill: judged unsafe",
    "refusal_rate_prefill_unseen": "unseen-generator prefill: refuses",
    "attack_adaptive_worst_case": "adaptive attacker, worst case: prompts broken",
    "overrefusal_clean": "refuses, no prefill",
    "compliance_clean": "complies, no prefill",
    "compliance_refusal_prefill": "refusal prefill: complies",
    "helpfulness_clean": "helpfulness, no prefill",
    "overrefusal_refusal_prefill": "refusal prefill: refuses",
    "helpfulness_refusal_prefill": "refusal prefill: helpfulness",
    "task_accuracy": "accuracy (mean over samples)",
    "reflection_rate_prefill": "under a prefill",
    "reflection_rate_clean": "harmful prompts, no prefill",
    "verification_rate_clean": "checks its own draft, harmful prompts, no prefill",
    "invalid_clean": "no attack",
    "invalid_prefill": "prefill attack",
    "invalid_hijack": "full CoT hijack",
    "invalid_hcot": "H-CoT",
    "invalid_prefill_unseen": "unseen-generator prefill",
    "invalid_refusal_prefill": "refusal prefill",
    "reasoning_tokens": "reasoning tokens (clean prompts)",
    "answer_tokens": "answer tokens (clean prompts)",
}
_DYNAMIC_TITLES = (
    (re.compile(r"safety_ipr(\d+)"), "IPR round {0}: judged safe"),
    (re.compile(r"safety_prefill_(\d+)w"), "{0}-word prefill: judged safe"),
    (re.compile(r"invalid_prefill_(\d+)w"), "{0}-word prefill"),
    (re.compile(r"attack_ipr(\d+)_success"), "IPR round {0}: judged unsafe"),
    (re.compile(r"refusal_rate_ipr(\d+)"), "IPR round {0}: refuses"),
    (re.compile(r"invalid_ipr(\d+)"), "IPR round {0}"),
    (re.compile(r"attack_prefill_(\d+)w_success"), "{0}-word prefill: judged unsafe"),
    (re.compile(r"task_pass@(\d+)"), "pass@{0}"),
    (re.compile(r"extra_([a-z0-9]+)_harm_(\w+)"), "{0}, {1}: mean harmfulness (malformed answers left out)"),
    (re.compile(r"extra_([a-z0-9]+)_safety_(\w+)"), "{0}, {1}: judged safe"),
)
# (file name, title, [(bar-group label, metric)]); groups are completed with the IPR rounds present.
PLOTS = (
    (
        "attack_success.png",
        "Safety under attack: answers judged safe, share of all samples (higher is better; malformed ones are not safe)",
        [("prefill", "safety_prefill"), ("hijack", "safety_hijack")],
    ),
    (
        "stronger_attacks.png",
        "Stronger attacks: judged safe, share of all samples (higher is better)",
        [
            ("H-CoT", "safety_hcot"),
            ("unseen prefill", "safety_prefill_unseen"),
            ("adaptive, every try", "safety_adaptive"),
        ],
    ),
    (
        "reflection_rate.png",
        "Self-reflection rate (higher is better)",
        [("under a prefill", "reflection_rate_prefill"), ("no prefill (harmful)", "reflection_rate_clean")],
    ),
    (
        "overrefusal.png",
        "Over-refusal on benign prompts (lower is better)",
        [("clean", "overrefusal_clean"), ("refusal prefill", "overrefusal_refusal_prefill")],
    ),
)
CSS = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
.tablewrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
tr.area th { background: #eef2f7; text-align: left; }
.key { color: #777; font-size: 0.8em; font-family: monospace; }
.ci { color: #666; font-size: 0.85em; display: block; }
.warning { background: #fff3cd; border: 1px solid #e0c060; padding: 0.6em 1em; }
.transcript { border: 1px solid #ccc; margin: 1em 0; padding: 0.5em 1em; }
.meta { color: #555; font-size: 0.9em; }
pre { white-space: pre-wrap; word-wrap: break-word; background: #f7f7f7; padding: 0.5em; }
.prefill { background: #f8c8c8; }
.model { background: #d8f0d8; }
img { max-width: 100%; }
"""


def title(metric: str) -> str:
    """A readable title for ``metric`` (its area gives the context)."""
    if metric in TITLES:
        return TITLES[metric]
    for pattern, text in _DYNAMIC_TITLES:
        m = pattern.fullmatch(metric)
        if m:
            return text.format(*m.groups()) + (" (= prefill attack)" if metric == "attack_ipr1_success" else "")
    return metric.replace("_", " ")


def _ordered(methods: Iterable[str], methods_order: Iterable[str] = METHODS_ORDER) -> list[str]:
    """``methods`` with those of ``methods_order`` first (in that order), then the others alphabetically."""
    present, order = set(methods), list(methods_order)
    return [m for m in order if m in present] + sorted(present - set(order))


def summarize(records: Iterable[dict], methods_order: Iterable[str] = METHODS_ORDER) -> dict:
    """Statistics over seeds of every metric, per method.

    Returns ``{"seeds": [...], "methods": {method: {metric: {"mean", "std", "n", "ci", "samples"}}}}``: the
    mean and population std of the per-seed values, ``n`` seeds, and for rates ``ci``, the 95% Wilson
    interval of all seeds' samples pooled (``samples`` of them); ``ci`` is None for means (helpfulness,
    pass@k, token counts). A metric with no sample for a method is omitted for that method."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["seed"]), []).append(r)
    methods = {}
    for method in _ordered({m for m, _ in groups}, methods_order):
        per_seed = [metric_stats(rs) for (m, _), rs in groups.items() if m == method]
        stats = {}
        for metric in ordered({k for s in per_seed for k in s}):
            seeds = [s[metric] for s in per_seed if metric in s]
            values = [s["value"] for s in seeds]
            samples = sum(s["n"] for s in seeds)
            rate = all(s["k"] is not None for s in seeds)
            ci = list(wilson(sum(s["k"] for s in seeds), samples)) if rate else None
            stats[metric] = {
                "mean": statistics.fmean(values),
                "std": statistics.pstdev(values),
                "n": len(values),
                "ci": ci,
                "samples": samples,
            }
        methods[method] = stats
    return {"seeds": sorted({s for _, s in groups}), "methods": methods}


def _present_metrics(summary: dict) -> list[str]:
    return ordered({m for stats in summary["methods"].values() for m in stats})


def _areas(metrics: list[str]) -> list[tuple[str, list[str]]]:
    out = []
    for name, test in AREAS:
        rows = [m for m in metrics if test(m)]
        if rows:
            out.append((name, rows))
    rest = [m for m in metrics if not any(test(m) for _, test in AREAS)]
    return out + ([("Other", rest)] if rest else [])


def _value(metric: str, x: float) -> str:
    return f"{100 * x:.1f}" if is_rate(metric) else f"{x:.1f}"


def _cell(metric: str, stat: dict | None, n_seeds: int) -> tuple[str, str]:
    """(main text, interval text) of one cell."""
    if stat is None:
        return "—", ""
    main = _value(metric, stat["mean"])
    if n_seeds > 1:
        main += f" ± {_value(metric, stat['std'])}"
        if stat["n"] != n_seeds:
            main += f" (n={stat['n']})"
    ci = f"[{100 * stat['ci'][0]:.1f}, {100 * stat['ci'][1]:.1f}]" if stat.get("ci") else ""
    return main, ci


def _legend(metric: str) -> str:
    direction = {True: "higher is better", False: "lower is better"}.get(higher_is_better(metric), "informational")
    unit = "%" if is_rate(metric) else "tokens"
    return f"{describe(metric)} ({unit}, {direction})"


def _how_to_read(n_seeds: int) -> str:
    if n_seeds == 1:
        return (
            "One seed: no spread across seeds to show. Cells are the rate in % with its 95% Wilson interval "
            "over the samples in brackets (token counts: means)."
        )
    return (
        f"Cells are mean ± std over {n_seeds} seeds (% for rates); brackets give the 95% Wilson interval of all "
        "seeds' samples pooled."
    )


def _stat_bar(summary: dict, method: str, metric: str) -> tuple[float, float, float] | None:
    """(height, lower error, upper error) in % of one bar, or None."""
    s = summary["methods"][method].get(metric)
    if s is None:
        return None
    mean = 100 * s["mean"]
    if s.get("ci"):
        lo, hi = 100 * s["ci"][0], 100 * s["ci"][1]
        return mean, max(0.0, mean - lo), max(0.0, hi - mean)
    return mean, 100 * s["std"], 100 * s["std"]


def _plot(summary: dict, groups: list[tuple[str, str]], plot_title: str, path: Path) -> bool:
    """Grouped bars (one group per metric, one bar per method), each labelled with its value (zero bars
    too) and with its 95% interval as error bar; False if no data."""
    groups = [(label, m) for label, m in groups if any(m in s for s in summary["methods"].values())]
    if not groups:
        return False
    methods = list(summary["methods"])
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(5.5, 1.6 * len(groups) + 2), 3.8))
    for i, method in enumerate(methods):
        bars = [_stat_bar(summary, method, m) for _, m in groups]
        xs = [g + (i - (len(methods) - 1) / 2) * width for g in range(len(groups))]
        heights = [b[0] if b else float("nan") for b in bars]
        err = [[b[1] if b else 0.0 for b in bars], [b[2] if b else 0.0 for b in bars]]
        drawn = ax.bar(xs, heights, width, label=method, yerr=err, capsize=3)
        ax.bar_label(drawn, labels=[f"{h:.0f}" if b else "" for h, b in zip(heights, bars)], fontsize=7, padding=2)
    ax.set_xticks(range(len(groups)), [label for label, _ in groups])
    ax.set_ylabel("%")
    ax.set_ylim(0, 118)
    ax.set_yticks(range(0, 101, 20))
    width_chars = int(fig.get_figwidth() * 12)  # what a 10-point title fits per inch of figure, with margin
    ax.set_title(textwrap.fill(plot_title, width_chars), fontsize=10)  # a long title wraps, never clipped
    ax.legend(fontsize="small", loc="upper center", ncol=max(len(methods), 1))
    fig.tight_layout()
    _save(fig, path)
    return True


def _plot_sweep(summary: dict, path: Path) -> bool:
    """The judged-safe share against prefill length, one line per method (the prefill_sweep attack)."""
    pattern = re.compile(r"safety_prefill_(\d+)w")
    lengths = sorted({int(m.group(1)) for s in summary["methods"].values() for k in s if (m := pattern.fullmatch(k))})
    if not lengths:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for method, stats in summary["methods"].items():
        points = [(n, stats[f"safety_prefill_{n}w"]) for n in lengths if f"safety_prefill_{n}w" in stats]
        if points:
            ax.errorbar(
                [n for n, _ in points],
                [100 * s["mean"] for _, s in points],
                marker="o",
                capsize=3,
                yerr=[
                    [100 * (s["mean"] - s["ci"][0]) for _, s in points],
                    [100 * (s["ci"][1] - s["mean"]) for _, s in points],
                ],
                label=method,
            )
    ax.set_xlabel("prefill length (words)")
    ax.set_ylabel("judged safe, % of all samples")
    ax.set_ylim(-2, 105)
    ax.set_title("Safety under the prefill attack against prefill length (higher is better)", fontsize=10)
    ax.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, path)
    return True


def _save(fig, path: Path) -> None:
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def _transcripts(records: list[dict], methods: list[str]) -> list[tuple[str, list[tuple[str, list[dict]]]]]:
    """Per attack, per method, up to ``TRANSCRIPTS_PER_METHOD`` records, the same examples where possible."""

    def key(r):
        return (r.get("seed", 0), str(r.get("example_id")), r.get("sample", 0))

    ipr_rounds = [r.get("round", 0) for r in records if r["attack"] == "ipr"]
    sections = [("prefill", "prefill", None), ("refusal_prefill", "refusal_prefill", None), ("hijack", "hijack", None)]
    if ipr_rounds:
        sections.append((f"ipr round {max(ipr_rounds)}", "ipr", max(ipr_rounds)))
    out = []
    for section, attack, rnd in sections:
        by_method: dict[str, list[dict]] = {}
        for r in sorted(
            (r for r in records if r["attack"] == attack and (rnd is None or r.get("round") == rnd)), key=key
        ):
            by_method.setdefault(r["method"], []).append(r)
        if not by_method:
            continue
        common = set.intersection(*({str(r.get("example_id")) for r in rs} for rs in by_method.values()))
        ids = sorted(common)[:TRANSCRIPTS_PER_METHOD]
        picked = []
        for method in [m for m in methods if m in by_method]:
            rs = by_method[method]
            chosen = [next(r for r in rs if str(r.get("example_id")) == i) for i in ids]
            chosen += [r for r in rs if r not in chosen][: TRANSCRIPTS_PER_METHOD - len(chosen)]
            picked.append((method, chosen))
        out.append((section, picked))
    return out


def _meta(r: dict) -> str:
    verdict = {True: "safe", False: "unsafe"}.get(r.get("safe"), "")
    return (
        f"{r['method']} · seed {r.get('seed')} · example {r.get('example_id')} · "
        f"sample {r.get('sample', 0)} · label: {r.get('label')}" + (f" · judged {verdict}" if verdict else "")
    )


def _history(r: dict) -> str:
    """The IPR prompt before the current round's injected text (earlier rounds included)."""
    text, injected = r.get("prompt_text", ""), r.get("injected", "")
    return text[: len(text) - len(injected)] if injected and text.endswith(injected) else text


def _fence(text: str) -> str:
    """``text`` as a fenced markdown code block whose fence no backtick run inside it can close."""
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}text\n{text}\n{ticks}"


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in text.split("\n"))


def auto_notes(records: list[dict]) -> list[str]:
    """What a reader must know to compare these numbers: the judge(s) and the attack prefill lengths."""
    notes = []
    judges = sorted({str(r["judge"]) for r in records if r.get("judge")})
    if judges:
        notes.append(f"Judge: {', '.join(judges)}.")
    # the judge of the harmful answers (a per-kind router names each kind's: "benign=…,harmful=…,task=…")
    harmful = {re.sub(r"^.*\bharmful=([^,]*).*$", r"\1", j) for j in judges}
    if any("refusal-rules" in j or "refusal-embedding" in j for j in harmful):
        notes.append(
            "A refusal detector (string rules or the refusal classifier) stands in for a safety judge "
            "here: 'judged safe' means 'refused'. Use a guard or rubric judge for the paper's safety score."
        )
    words = sorted(r["prefill_words"] for r in records if r["attack"] == "prefill" and r.get("prefill_words"))
    if words:
        spread = (
            f"{words[0]}–{words[-1]} words (median {words[len(words) // 2]})"
            if words[0] != words[-1]
            else f"{words[0]} words"
        )
        notes.append(f"Attack prefills (prefill attack, IPR, refusal prefill): ℓ = {spread}.")
    return notes


def benchmark_rows(records: list[dict]) -> list[dict]:
    """The per-benchmark headline table (``recap.eval.suite.suite_table``) of records that carry a
    ``benchmark`` (written by ``recap eval --suite``); ``[]`` when none do."""
    from recap.eval.metrics import compute_metrics
    from recap.eval.suite import suite_table

    groups: dict[str, dict[str, list[dict]]] = {}
    for r in records:
        if r.get("benchmark"):
            groups.setdefault(r["method"], {}).setdefault(r["benchmark"], []).append(r)
    if not groups:
        return []
    results = {m: {b: compute_metrics(rs) for b, rs in by.items()} for m, by in groups.items()}
    return suite_table({m: results[m] for m in _ordered(results)})


def _bench_columns(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        cols += [c for c in row if c != "method" and c not in cols]
    return cols


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _markdown(summary, report_title, notes, plots, transcripts, bench=(), comparisons=()) -> str:
    methods, n_seeds = list(summary["methods"]), len(summary["seeds"])
    lines = [f"# {report_title}", "", f"> **{SAFETY_NOTE}**", ""]
    lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    lines += [f"Seeds: {', '.join(map(str, summary['seeds']))}. {_how_to_read(n_seeds)}", ""]
    lines += ["| metric | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for area, metrics in _areas(_present_metrics(summary)):
        lines.append(f"| **{area}** |" + " |" * len(methods))
        for m in metrics:
            cells = [" ".join(x for x in _cell(m, summary["methods"][meth].get(m), n_seeds) if x) for meth in methods]
            lines.append(f"| {title(m)} (`{m}`) | " + " | ".join(cells) + " |")
    lines += ["", "**Legend**", ""] + [f"- `{m}`: {_legend(m)}" for m in _present_metrics(summary)] + [""]
    for heading, result, conditions in comparisons:
        lines += [f"## {heading}", "", comparison_markdown(result, conditions), beyond_noise(result), ""]
    if bench:
        cols = _bench_columns(bench)
        lines += ["## Per benchmark (%)", "", "| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        lines += [f"| {row['method']} | " + " | ".join(_pct(row.get(c)) for c in cols) + " |" for row in bench]
        lines += [
            "",
            "Safety is the share of all answers judged safe (a malformed answer is not safe); complies is the share of benign answers that comply (helpfulness above 0.5), helpfulness their mean score.",
            "",
        ]
    for name, plot_title in plots:
        lines += [f"![{plot_title}]({name})", ""]
    lines += ["## Transcripts", ""]
    for attack, picked in transcripts:
        lines += [f"### {attack}", ""]
        for _, rs in picked:
            for r in rs:
                lines += [f"#### {_meta(r)}", "", "**user**", "", _fence(r.get("prompt", "")), ""]
                if r["attack"] == "ipr":
                    lines += ["**conversation so far (all earlier rounds)**", "", _fence(_history(r)), ""]
                if r.get("injected"):
                    lines += [_quote("**prefill (attacker)**\n\n" + _fence(r["injected"])), ""]
                lines += ["**model continuation**", "", _fence(r.get("completion", "")), ""]
    return "\n".join(lines)


def _html(summary, report_title, notes, plots, transcripts, out_dir: Path, bench=(), comparisons=()) -> str:
    e = html.escape
    methods, n_seeds = list(summary["methods"]), len(summary["seeds"])
    parts = [
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{e(report_title)}</title>',
        f"<style>{CSS}</style></head><body>",
        f"<h1>{e(report_title)}</h1>",
        f'<p class="warning">{e(SAFETY_NOTE)}</p>',
    ]
    if notes:
        parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    parts.append(f"<p>Seeds: {e(', '.join(map(str, summary['seeds'])))}. {e(_how_to_read(n_seeds))}</p>")
    parts.append(
        '<div class="tablewrap"><table><tr><th>metric</th>' + "".join(f"<th>{e(m)}</th>" for m in methods) + "</tr>"
    )
    for area, metrics in _areas(_present_metrics(summary)):
        parts.append(f'<tr class="area"><th colspan="{len(methods) + 1}">{e(area)}</th></tr>')
        for m in metrics:
            cells = []
            for meth in methods:
                main, ci = _cell(m, summary["methods"][meth].get(m), n_seeds)
                cells.append(f"<td>{e(main)}" + (f'<span class="ci">{e(ci)}</span>' if ci else "") + "</td>")
            parts.append(
                f'<tr><td title="{e(_legend(m))}">{e(title(m))}<div class="key">{e(m)}</div></td>'
                + "".join(cells)
                + "</tr>"
            )
    parts.append(
        '</table></div><details><summary>What each metric measures</summary><ul class="legend">'
        + "".join(f"<li><code>{e(m)}</code>: {e(_legend(m))}</li>" for m in _present_metrics(summary))
        + "</ul></details>"
    )
    for heading, result, conditions in comparisons:
        parts += [f"<h2>{e(heading)}</h2>", comparison_html(result, conditions), f"<p>{e(beyond_noise(result))}</p>"]
    if bench:
        cols = _bench_columns(bench)
        parts.append(
            '<h2>Per benchmark (%)</h2><div class="tablewrap"><table><tr><th>method</th>'
            + "".join(f"<th>{e(c)}</th>" for c in cols)
            + "</tr>"
        )
        parts += [
            f"<tr><td>{e(row['method'])}</td>" + "".join(f"<td>{_pct(row.get(c))}</td>" for c in cols) + "</tr>"
            for row in bench
        ]
        parts.append(
            "</table></div><p>Safety is the share of all answers judged safe (a malformed answer is not safe); complies is the share of benign answers that comply (helpfulness above 0.5), helpfulness their mean score.</p>"
        )
    for name, plot_title in plots:
        data = base64.b64encode((out_dir / name).read_bytes()).decode("ascii")
        parts.append(f'<p><img alt="{e(plot_title)}" src="data:image/png;base64,{data}"></p>')
    parts.append("<h2>Transcripts</h2>")
    for attack, picked in transcripts:
        parts.append(f"<h3>{e(attack)}</h3>")
        for _, rs in picked:
            for r in rs:
                parts.append(
                    f'<div class="transcript"><p class="meta">{e(_meta(r))}</p>'
                    f"<b>user</b><pre>{e(r.get('prompt', ''))}</pre>"
                )
                if r["attack"] == "ipr":
                    parts.append(
                        "<details><summary>conversation so far (all earlier rounds)</summary>"
                        f"<pre>{e(_history(r))}</pre></details>"
                    )
                injected = f'<span class="prefill">{e(r["injected"])}</span>' if r.get("injected") else ""
                parts.append(
                    '<b>assistant</b> (<span class="prefill">prefill (attacker)</span>, '
                    '<span class="model">model continuation</span>)'
                    f'<pre>{injected}<span class="model">{e(r.get("completion", ""))}</span></pre></div>'
                )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    records: Iterable[dict],
    out_dir: str | Path,
    title: str = "RECAP report",
    notes: list[str] | None = None,
    summary: dict | None = None,
    comparisons: Sequence[tuple[str, dict, Sequence]] = (),
) -> dict:
    """Write ``report.md``, a self-contained ``report.html`` and PNG plots into ``out_dir``.

    ``summary`` defaults to ``summarize(records)``; it is returned (with ``benchmarks`` rows for suite
    records). ``comparisons``: ``(heading, result, conditions)`` of ``recap.report.comparison.compare``, each
    shown after the metric table with its difference row and which differences exceed their interval."""
    records = list(records)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summary if summary is not None else summarize(records)
    notes = [*(notes or []), *auto_notes(records)]
    rounds = sorted(
        {
            int(m[len("safety_ipr") :])
            for s in summary["methods"].values()
            for m in s
            if m.startswith("safety_ipr") and m[len("safety_ipr") :].isdigit()
        }
    )
    plots = []
    for name, plot_title, groups in PLOTS:
        if name == "attack_success.png":
            groups = [*groups, *[(f"IPR k={k}", f"safety_ipr{k}") for k in rounds if k > 1]]
        if _plot(summary, groups, plot_title, out_dir / name):
            plots.append((name, plot_title))
    if _plot_sweep(summary, out_dir / "prefill_sweep.png"):
        plots.append(("prefill_sweep.png", "Safety against prefill length"))
    methods = _ordered(list(summary["methods"]) + [r["method"] for r in records], summary["methods"])
    transcripts = _transcripts(records, methods)
    bench = benchmark_rows(records)
    if bench:
        summary = {**summary, "benchmarks": bench}
    write_text(out_dir / "report.md", _markdown(summary, title, notes, plots, transcripts, bench, comparisons))
    write_text(out_dir / "report.html", _html(summary, title, notes, plots, transcripts, out_dir, bench, comparisons))
    return summary
