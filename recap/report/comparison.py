"""Two methods compared over seeds: per condition, the safe (or compliant) share with per-seed values, a pooled
95 % Wilson interval and the invalid share, then the treatment − baseline difference with its 95 % interval.

A *condition* is a name and a selector of evaluation records (``Condition``): "safe under the prefilling
attack at 40 words" selects the harmful records of that attack; "XSTest compliance" selects the benign clean
records and counts the answers that are not refusals. A malformed or unfinished answer (label ``invalid``)
is never safe and never compliant: it stays in the denominator and its share is shown beside the rate.

``rejudge`` puts another judge's verdicts on stored records (the invalid ones stay invalid), so one table
can be read under two judges: the string rules and a classifier.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from recap.eval.metrics import wilson
from recap.rewards.judges import INVALID

Z95 = 1.959964


@dataclass(frozen=True)
class Condition:
    """A column: ``name``, the records it reads (``select``) and what counts as a success there
    (``harmful``: judged safe; else: not refused)."""

    name: str
    select: Callable[[dict], bool]
    harmful: bool = True

    def counts(self, records: Sequence[dict]) -> tuple[int, int, int] | None:
        """``(successes, n, invalid)`` or None without records."""
        rs = [r for r in records if self.select(r)]
        if not rs:
            return None
        invalid = sum(r["label"] == INVALID for r in rs)
        if self.harmful:
            ok = sum(r["label"] != INVALID and r.get("safe") is True for r in rs)
        else:
            ok = sum(r["label"] != INVALID and r.get("refused") is not True for r in rs)
        return ok, len(rs), invalid


def attack(name: str, attack_: str, kind: str = "harmful", **match) -> Condition:
    """The records of one attack (and kind), optionally matching further fields (``round=2``,
    ``prefill_words=80``)."""
    return Condition(
        name,
        lambda r: r["attack"] == attack_ and r["kind"] == kind and all(r.get(k) == v for k, v in match.items()),
        harmful=kind == "harmful",
    )


def rejudge(records: Sequence[dict], judge) -> list[dict]:
    """Copies of ``records`` with ``judge``'s verdicts (safe, refused, score); invalid records are kept as they
    are (a malformed answer is not judged again)."""
    from recap.rewards.judges import JudgeItem, checked_judge, judge_name

    todo = [i for i, r in enumerate(records) if r["label"] != INVALID]
    verdicts = checked_judge(
        judge, [JudgeItem(records[i]["prompt"], records[i]["answer"], records[i]["kind"]) for i in todo]
    )
    out = [dict(r) for r in records]
    name = judge_name(judge)
    for i, v in zip(todo, verdicts, strict=True):
        out[i].update(safe=v.safe, refused=v.refused, score=v.score, label=v.label, judge=name)
    return out


def compare(
    records: Sequence[dict],
    conditions: Sequence[Condition],
    methods: Sequence[str],
    baseline: str,
    treatment: str,
) -> dict:
    """Per method and condition: per-seed rates, their mean, the pooled Wilson interval, the invalid share;
    and per condition the treatment − baseline difference of pooled rates with a 95 % normal interval."""
    table: dict[str, dict] = {}
    for method in methods:
        seeds = sorted({r["seed"] for r in records if r["method"] == method})
        row = {}
        for c in conditions:
            per_seed = {}
            for s in seeds:
                got = c.counts([r for r in records if r["method"] == method and r["seed"] == s])
                if got:
                    per_seed[s] = got
            if not per_seed:
                continue
            k, n, bad = (sum(v[i] for v in per_seed.values()) for i in range(3))
            row[c.name] = {
                "mean": statistics.fmean(v[0] / v[1] for v in per_seed.values()),
                "per_seed": {s: v[0] / v[1] for s, v in per_seed.items()},
                "ci": wilson(k, n),
                "k": k,
                "n": n,
                "invalid": bad / n,
            }
        if row:
            table[method] = row
    diffs = {}
    for c in conditions:
        a, b = table.get(baseline, {}).get(c.name), table.get(treatment, {}).get(c.name)
        if not a or not b:
            continue
        pa, pb = a["k"] / a["n"], b["k"] / b["n"]
        half = Z95 * math.sqrt(pa * (1 - pa) / a["n"] + pb * (1 - pb) / b["n"])
        diffs[c.name] = {"diff": pb - pa, "ci": (pb - pa - half, pb - pa + half)}
    return {"table": table, "diff": diffs, "baseline": baseline, "treatment": treatment}


def _detail(x: dict, invalid: str) -> str:
    """A cell's interval, per-seed values (with several seeds) and invalid share (``invalid`` formats it)."""
    text = f"[{x['ci'][0] * 100:.0f}, {x['ci'][1] * 100:.0f}]"
    if len(x["per_seed"]) > 1:
        text += " (" + " / ".join(f"{v * 100:.0f}" for v in x["per_seed"].values()) + ")"
    if x["invalid"]:
        text += " " + invalid.format(x["invalid"] * 100)
    return text


def comparison_markdown(result: dict, conditions: Sequence[Condition], labels: dict | None = None) -> str:
    """The rate table (mean over seeds, pooled 95 % interval, per-seed values, invalid share when any) and
    the difference row."""
    labels = labels or {}
    names = [c.name for c in conditions]
    lines = ["| model | seeds | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for method, row in result["table"].items():
        cells = []
        for name in names:
            x = row.get(name)
            if x is None:
                cells.append("—")
                continue
            cells.append(f"**{x['mean'] * 100:.1f}** " + _detail(x, "inv {:.0f}"))
        n_seeds = max(len(x["per_seed"]) for x in row.values())
        lines.append(f"| {labels.get(method, method)} | {n_seeds} | " + " | ".join(cells) + " |")
    if result["diff"]:
        t, b = result["treatment"], result["baseline"]
        lines += [
            "",
            f"| {labels.get(t, t)} − {labels.get(b, b)}, points | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
            "| difference [95 % CI] | "
            + " | ".join(
                f"{d['diff'] * 100:+.1f} [{d['ci'][0] * 100:+.0f}, {d['ci'][1] * 100:+.0f}]"
                if (d := result["diff"].get(n))
                else "—"
                for n in names
            )
            + " |",
        ]
    return "\n".join(lines) + "\n"


def beyond_noise(result: dict) -> str:
    """One plain line: which treatment − baseline differences have a 95 % interval that excludes 0."""
    t, b = result["treatment"], result["baseline"]
    up = [n for n, d in result["diff"].items() if d["ci"][0] > 0]
    down = [n for n, d in result["diff"].items() if d["ci"][1] < 0]
    if not up and not down:
        return f"No {t} − {b} difference exceeds its 95 % interval (none is distinguishable from noise)."
    parts = []
    if up:
        parts.append(f"higher with {t}: {', '.join(up)}")
    if down:
        parts.append(f"lower with {t}: {', '.join(down)}")
    return f"Differences beyond their 95 % interval — {'; '.join(parts)}."


def comparison_html(result: dict, conditions: Sequence[Condition], labels: dict | None = None) -> str:
    """The same tables as ``comparison_markdown``, as HTML."""
    import html

    e, labels = html.escape, labels or {}
    names = [c.name for c in conditions]
    head = "".join(f"<th>{e(n)}</th>" for n in names)
    rows = []
    for method, row in result["table"].items():
        cells = []
        for name in names:
            x = row.get(name)
            if x is None:
                cells.append("<td>—</td>")
                continue
            cells.append(f'<td>{x["mean"] * 100:.1f}<span class="ci">{e(_detail(x, "invalid {:.0f} %"))}</span></td>')
        rows.append(f"<tr><td>{e(labels.get(method, method))}</td>{''.join(cells)}</tr>")
    if result["diff"]:
        t, b = result["treatment"], result["baseline"]
        cells = "".join(
            f'<td>{d["diff"] * 100:+.1f}<span class="ci">[{d["ci"][0] * 100:+.0f}, {d["ci"][1] * 100:+.0f}]</span></td>'
            if (d := result["diff"].get(n))
            else "<td>—</td>"
            for n in names
        )
        rows.append(f'<tr class="area"><td>{e(labels.get(t, t))} − {e(labels.get(b, b))}, points</td>{cells}</tr>')
    return f'<div class="tablewrap"><table><tr><th>model</th>{head}</tr>{"".join(rows)}</table></div>'
