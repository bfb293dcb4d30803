"""Two methods compared over seeds: per condition, the safe (or compliant) share with per-seed values, a pooled
95 % Wilson interval and the invalid share, then the treatment − baseline difference with two 95 % intervals.

The two intervals answer two questions. The *pooled* one (normal, all seeds' samples pooled) holds the trained
models fixed: is the difference more than the sampling noise of these evaluations? The *seed-level* one
(paired t over the seeds both methods ran, from the per-seed differences) treats each training seed as one
draw: would the difference hold for another training run? Run-to-run spread is often larger than sampling
noise, so the seed-level interval is usually the wider and more demanding (it is never narrower than the pooled
one); with 2 seeds its t quantile is 12.7, and with one seed there is none.

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

from scipy.stats import t as student_t

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
    and per condition the treatment − baseline difference of pooled rates with a 95 % normal interval
    (``ci``), plus, where both methods ran the same two or more seeds, the mean per-seed difference
    (``seed_diff``) with its paired-t 95 % interval (``seed_ci``) over those ``seeds``."""
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
        diffs[c.name] = {"diff": pb - pa, "ci": (pb - pa - half, pb - pa + half)} | seed_interval(
            a["per_seed"], b["per_seed"], floor=half
        )
    return {"table": table, "diff": diffs, "baseline": baseline, "treatment": treatment}


def seed_interval(baseline: dict, treatment: dict, floor: float = 0.0) -> dict:
    """The treatment − baseline difference over the seeds both ran (per-seed rates ``{seed: rate}``): the
    mean per-seed difference and its paired-t 95 % interval; empty with fewer than two common seeds.

    The half-width is never below ``floor`` (the pooled interval's): a few seeds can agree by chance, and
    two seeds with the same difference would otherwise give an interval of width 0."""
    seeds = sorted(set(baseline) & set(treatment))
    if len(seeds) < 2:
        return {}
    ds = [treatment[s] - baseline[s] for s in seeds]
    mean = statistics.fmean(ds)
    half = float(student_t.ppf(0.975, len(ds) - 1)) * statistics.stdev(ds) / math.sqrt(len(ds))
    half = max(half, floor)
    return {"seed_diff": mean, "seed_ci": (mean - half, mean + half), "seeds": len(seeds)}


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
            "| difference [95 % CI, samples pooled] | "
            + " | ".join(_interval(result["diff"].get(n), "diff", "ci") for n in names)
            + " |",
        ]
        if seeds := _seeds(result):
            lines.append(
                f"| over {seeds} seeds [95 % CI, paired t] | "
                + " | ".join(_interval(result["diff"].get(n), "seed_diff", "seed_ci") for n in names)
                + " |"
            )
    return "\n".join(lines) + "\n"


def _interval(d: dict | None, value: str, ci: str) -> str:
    """ "+12.3 [+4, +20]" in points, or "—" where the difference has no such interval."""
    if not d or ci not in d:
        return "—"
    return f"{d[value] * 100:+.1f} {_bounds(d[ci])}"


def _bounds(ci: tuple[float, float]) -> str:
    """ "[+4, +20]" in whole points; a bound that rounds to zero is "0" (not "-0")."""
    return "[" + ", ".join("0" if (b := f"{x * 100:+.0f}") in ("+0", "-0") else b for x in ci) + "]"


def _seeds(result: dict) -> int:
    """The number of seeds of the seed-level intervals (0 when there are none)."""
    return max((d.get("seeds", 0) for d in result["diff"].values()), default=0)


def beyond_noise(result: dict) -> str:
    """One plain line: which treatment − baseline differences have a 95 % interval that excludes 0."""
    t, b = result["treatment"], result["baseline"]
    up = [n for n, d in result["diff"].items() if d["ci"][0] > 0]
    down = [n for n, d in result["diff"].items() if d["ci"][1] < 0]
    if not up and not down:
        line = f"No {t} − {b} difference exceeds its 95 % interval (none is distinguishable from noise)."
    else:
        line = f"Differences beyond their 95 % interval — {_directions(t, up, down)}."
    if seeds := _seeds(result):
        up = [n for n, d in result["diff"].items() if "seed_ci" in d and d["seed_ci"][0] > 0]
        down = [n for n, d in result["diff"].items() if "seed_ci" in d and d["seed_ci"][1] < 0]
        line += f" Over the {seeds} training seeds (paired t): " + (
            f"{_directions(t, up, down)}." if up or down else "none exceeds its interval."
        )
    return line


def _directions(t: str, up: list[str], down: list[str]) -> str:
    parts = []
    if up:
        parts.append(f"higher with {t}: {', '.join(up)}")
    if down:
        parts.append(f"lower with {t}: {', '.join(down)}")
    return "; ".join(parts)


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
        head_ = f"{labels.get(t, t)} − {labels.get(b, b)}, points"
        kinds = [(f"{head_} (samples pooled)", "diff", "ci")]
        if seeds := _seeds(result):
            kinds.append((f"{head_} (over {seeds} seeds, paired t)", "seed_diff", "seed_ci"))
        for label, value, ci in kinds:
            cells = "".join(
                f'<td>{d[value] * 100:+.1f}<span class="ci">{_bounds(d[ci])}</span></td>'
                if (d := result["diff"].get(n)) and ci in d
                else "<td>—</td>"
                for n in names
            )
            rows.append(f'<tr class="area"><td>{e(label)}</td>{cells}</tr>')
    return f'<div class="tablewrap"><table><tr><th>model</th>{head}</tr>{"".join(rows)}</table></div>'
