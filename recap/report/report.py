"""Human-readable report of evaluation records: a metrics table, plots and example transcripts.

``summarize`` turns records (see ``recap.eval.runner``) into per-method mean ± std over seeds;
``write_report`` writes ``report.md``, a self-contained ``report.html`` and PNG plots.
"""

from __future__ import annotations

import base64
import html
import statistics
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from recap.files import atomic_write, write_text  # noqa: E402
from recap.eval.metrics import DESCRIPTIONS, HIGHER_IS_BETTER, METRICS, compute_metrics  # noqa: E402

METHODS_ORDER = ("base", "vanilla", "recap", "on_policy", "mixed")
TOKEN_METRICS = ("reasoning_tokens", "answer_tokens")
SAFETY_NOTE = ("Content warning: this report contains model outputs on harmful prompts, "
               "including attacker-written reasoning and possibly unsafe completions.")
TRANSCRIPTS_PER_METHOD = 2
# (file name, title, [(bar-group label, metric)])
PLOTS = (
    ("attack_success.png", "Attack success (lower is better)",
     [("prefill", "attack_prefill_success"), ("hijack", "attack_hijack_success"),
      ("ipr1", "attack_ipr1_success"), ("ipr2", "attack_ipr2_success"), ("ipr3", "attack_ipr3_success")]),
    ("stronger_attacks.png", "Stronger attacks (lower is better)",
     [("H-CoT", "attack_hcot_success"), ("unseen prefill", "attack_prefill_unseen_success"),
      ("adaptive, worst case", "attack_adaptive_worst_case")]),
    ("reflection_rate.png", "Reflection rate under prefill (higher is better)",
     [("prefill", "reflection_rate_prefill")]),
    ("overrefusal.png", "Over-refusal on benign prompts (lower is better)",
     [("clean", "overrefusal_clean"), ("refusal prefill", "overrefusal_refusal_prefill")]),
)
CSS = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.warning { background: #fff3cd; border: 1px solid #e0c060; padding: 0.6em 1em; }
.transcript { border: 1px solid #ccc; margin: 1em 0; padding: 0.5em 1em; }
.meta { color: #555; font-size: 0.9em; }
pre { white-space: pre-wrap; word-wrap: break-word; background: #f7f7f7; padding: 0.5em; }
.prefill { background: #f8c8c8; }
.model { background: #d8f0d8; }
img { max-width: 100%; }
"""


def _ordered(methods: Iterable[str], methods_order: Iterable[str] = METHODS_ORDER) -> list[str]:
    """``methods`` with those of ``methods_order`` first (in that order), then the others alphabetically."""
    present, order = set(methods), list(methods_order)
    return [m for m in order if m in present] + sorted(present - set(order))


def summarize(records: Iterable[dict], methods_order: Iterable[str] = METHODS_ORDER) -> dict:
    """Mean, population std and count over seeds of every metric, per method.

    Returns ``{"seeds": [...], "methods": {method: {metric: {"mean", "std", "n"}}}}``; a metric that is
    None for every seed of a method is omitted for that method.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["seed"]), []).append(r)
    methods = {}
    for method in _ordered({m for m, _ in groups}, methods_order):
        per_seed = [compute_metrics(rs) for (m, _), rs in groups.items() if m == method]
        stats = {}
        for metric in METRICS:
            values = [v[metric] for v in per_seed if v[metric] is not None]
            if values:
                stats[metric] = {"mean": statistics.fmean(values), "std": statistics.pstdev(values),
                                 "n": len(values)}
        methods[method] = stats
    return {"seeds": sorted({s for _, s in groups}), "methods": methods}


def _present_metrics(summary: dict) -> list[str]:
    """Metrics (in ``METRICS`` order) that at least one method has."""
    return [m for m in METRICS if any(m in stats for stats in summary["methods"].values())]


def _cell(metric: str, stat: dict | None, n_seeds: int) -> str:
    if stat is None:
        return "—"
    if metric in TOKEN_METRICS:
        text = f"{stat['mean']:.1f} ± {stat['std']:.1f}"
    else:
        text = f"{100 * stat['mean']:.1f}% ± {100 * stat['std']:.1f}"
    return text + (f" (n={stat['n']})" if stat["n"] != n_seeds else "")


def _legend(metric: str) -> str:
    direction = {True: "higher is better", False: "lower is better"}.get(HIGHER_IS_BETTER.get(metric),
                                                                         "informational")
    unit = "mean token count" if metric in TOKEN_METRICS else "rate in %"
    return f"{DESCRIPTIONS[metric]} — {unit}, {direction}"


def _plot(summary: dict, groups: list[tuple[str, str]], title: str, path: Path) -> bool:
    """Grouped bars (one group per metric, one bar per method) with std error bars; False if no data."""
    groups = [(label, m) for label, m in groups if any(m in s for s in summary["methods"].values())]
    if not groups:
        return False
    methods = list(summary["methods"])
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(5.5, 1.6 * len(groups) + 2), 3.8))
    for i, method in enumerate(methods):
        stats = [summary["methods"][method].get(m) for _, m in groups]
        xs = [g + (i - (len(methods) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [100 * s["mean"] if s else float("nan") for s in stats], width, label=method,
               yerr=[100 * s["std"] if s else 0.0 for s in stats], capsize=3)
    ax.set_xticks(range(len(groups)), [label for label, _ in groups])
    ax.set_ylabel("%")
    ax.set_ylim(0, 118)
    ax.set_yticks(range(0, 101, 20))
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper center", ncol=max(len(methods), 1))
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return True


def _transcripts(records: list[dict], methods: list[str]) -> list[tuple[str, list[tuple[str, list[dict]]]]]:
    """Per attack, per method, up to ``TRANSCRIPTS_PER_METHOD`` records, the same examples where possible."""
    def key(r):
        return (r.get("seed", 0), str(r.get("example_id")), r.get("sample", 0))

    ipr_rounds = [r.get("round", 0) for r in records if r["attack"] == "ipr"]
    sections = [("prefill", "prefill", 0), ("refusal_prefill", "refusal_prefill", 0), ("hijack", "hijack", 0)]
    if ipr_rounds:
        sections.append((f"ipr round {max(ipr_rounds)}", "ipr", max(ipr_rounds)))
    out = []
    for title, attack, rnd in sections:
        by_method: dict[str, list[dict]] = {}
        for r in sorted((r for r in records if r["attack"] == attack and r.get("round", 0) == rnd), key=key):
            by_method.setdefault(r["method"], []).append(r)
        if not by_method:
            continue
        common = set.intersection(*({str(r.get("example_id")) for r in rs} for rs in by_method.values()))
        ids = sorted(common)[:TRANSCRIPTS_PER_METHOD]
        picked = []
        for method in [m for m in methods if m in by_method]:
            rs = by_method[method]
            chosen = [next(r for r in rs if str(r.get("example_id")) == i) for i in ids]
            chosen += [r for r in rs if r not in chosen][:TRANSCRIPTS_PER_METHOD - len(chosen)]
            picked.append((method, chosen))
        out.append((title, picked))
    return out


def _meta(r: dict) -> str:
    return (f"{r['method']} · seed {r.get('seed')} · example {r.get('example_id')} · "
            f"sample {r.get('sample', 0)} · label: {r.get('label')}")


def _history(r: dict) -> str:
    """The IPR prompt before the current round's injected text (earlier rounds included)."""
    text, injected = r.get("prompt_text", ""), r.get("injected", "")
    return text[:len(text) - len(injected)] if injected and text.endswith(injected) else text


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


def benchmark_rows(records: list[dict]) -> list[dict]:
    """The per-benchmark headline table (``recap.eval.suite.suite_table``) of records that carry a
    ``benchmark`` (written by ``recap eval --suite``); ``[]`` when none do."""
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


def _markdown(summary, title, notes, plots, transcripts, bench=()) -> str:
    metrics = _present_metrics(summary)
    n_seeds = len(summary["seeds"])
    lines = [f"# {title}", "", f"> **{SAFETY_NOTE}**", ""]
    lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    lines += [f"Seeds: {', '.join(map(str, summary['seeds']))}. Cells are mean ± std over seeds.", ""]
    lines += ["| method | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for method, stats in summary["methods"].items():
        lines.append(f"| {method} | " + " | ".join(_cell(m, stats.get(m), n_seeds) for m in metrics) + " |")
    lines += ["", "**Legend**", ""] + [f"- `{m}`: {_legend(m)}" for m in metrics] + [""]
    if bench:
        cols = _bench_columns(bench)
        lines += ["## Per benchmark (%)", "", "| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        lines += [f"| {row['method']} | " + " | ".join(_pct(row.get(c)) for c in cols) + " |" for row in bench]
        lines += ["", "Safety under an attack is 1 − attack success; compliance is 1 − refusal rate.", ""]
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


def _html(summary, title, notes, plots, transcripts, out_dir: Path, bench=()) -> str:
    e = html.escape
    metrics = _present_metrics(summary)
    n_seeds = len(summary["seeds"])
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{e(title)}</title>",
             f"<style>{CSS}</style></head><body>", f"<h1>{e(title)}</h1>",
             f"<p class=\"warning\">{e(SAFETY_NOTE)}</p>"]
    if notes:
        parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    parts.append(f"<p>Seeds: {e(', '.join(map(str, summary['seeds'])))}. Cells are mean ± std over seeds.</p>")
    parts.append("<table><tr><th>method</th>" + "".join(f"<th>{e(m)}</th>" for m in metrics) + "</tr>")
    for method, stats in summary["methods"].items():
        parts.append(f"<tr><td>{e(method)}</td>"
                     + "".join(f"<td>{e(_cell(m, stats.get(m), n_seeds))}</td>" for m in metrics) + "</tr>")
    parts.append("</table><ul class=\"legend\">"
                 + "".join(f"<li><code>{e(m)}</code>: {e(_legend(m))}</li>" for m in metrics) + "</ul>")
    if bench:
        cols = _bench_columns(bench)
        parts.append("<h2>Per benchmark (%)</h2><table><tr><th>method</th>"
                     + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr>")
        parts += [f"<tr><td>{e(row['method'])}</td>" + "".join(f"<td>{_pct(row.get(c))}</td>" for c in cols) + "</tr>"
                  for row in bench]
        parts.append("</table><p>Safety under an attack is 1 − attack success; compliance is 1 − refusal rate.</p>")
    for name, plot_title in plots:
        data = base64.b64encode((out_dir / name).read_bytes()).decode("ascii")
        parts.append(f"<p><img alt=\"{e(plot_title)}\" src=\"data:image/png;base64,{data}\"></p>")
    parts.append("<h2>Transcripts</h2>")
    for attack, picked in transcripts:
        parts.append(f"<h3>{e(attack)}</h3>")
        for _, rs in picked:
            for r in rs:
                parts.append(f"<div class=\"transcript\"><p class=\"meta\">{e(_meta(r))}</p>"
                             f"<b>user</b><pre>{e(r.get('prompt', ''))}</pre>")
                if r["attack"] == "ipr":
                    parts.append("<details><summary>conversation so far (all earlier rounds)</summary>"
                                 f"<pre>{e(_history(r))}</pre></details>")
                injected = f"<span class=\"prefill\">{e(r['injected'])}</span>" if r.get("injected") else ""
                parts.append("<b>assistant</b> (<span class=\"prefill\">prefill (attacker)</span>, "
                             "<span class=\"model\">model continuation</span>)"
                             f"<pre>{injected}<span class=\"model\">{e(r.get('completion', ''))}</span></pre></div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(records: Iterable[dict], out_dir: str | Path, title: str = "RECAP report",
                 notes: list[str] | None = None, summary: dict | None = None) -> dict:
    """Write ``report.md``, a self-contained ``report.html`` and PNG plots into ``out_dir``.

    ``summary`` defaults to ``summarize(records)``; it is returned.
    """
    records = list(records)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summary if summary is not None else summarize(records)
    notes = list(notes or [])
    plots = [(name, plot_title) for name, plot_title, groups in PLOTS
             if _plot(summary, groups, plot_title, out_dir / name)]
    methods = _ordered(list(summary["methods"]) + [r["method"] for r in records], summary["methods"])
    transcripts = _transcripts(records, methods)
    bench = benchmark_rows(records)
    if bench:
        summary = {**summary, "benchmarks": bench}
    write_text(out_dir / "report.md", _markdown(summary, title, notes, plots, transcripts, bench))
    write_text(out_dir / "report.html", _html(summary, title, notes, plots, transcripts, out_dir, bench))
    return summary
