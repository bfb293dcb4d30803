"""`recap demo --quick` end to end (about 3 minutes on 2 idle cores): checks the plumbing — base, vanilla and
RECAP are trained and evaluated under every condition of the paper (clean safety, prefill, full hijack, IPR
rounds 1–3, refusal prefill, task accuracy, reflection, token budget, the malformed share of each), and the
summary, report and plots are written — not the size of the effect. (`--compare` trains five methods and
takes far longer; its parts have unit tests.)"""

import json
import subprocess
import sys

import pytest

from recap.eval.attacks import round_reasoning
from recap.eval.metrics import METRICS
from recap.eval.store import ResultStore

COUNTS = ("reasoning_tokens", "answer_tokens")
MEANS = ("helpfulness_", "task_pass@")  # means of scores, not rates of samples: no interval


def ipr_chains(path) -> dict[int, dict[tuple, dict]]:
    """The prefill/IPR records of a result store by round and (example, sample), checked to be the paper's
    chain: round 1 is the prefilling attack's own records (stage ``prefill``, attack ``prefill``), rounds 2
    and 3 hold the same (example, sample) pairs, and round k's prompt is exactly round k - 1's prompt, then
    round k - 1's own reasoning (its answer dropped), the separator, the transition and the prefill."""
    chains: dict[int, dict[tuple, dict]] = {}
    for r in ResultStore(path).records():
        if r["attack"] in ("prefill", "ipr"):
            chains.setdefault(r["round"], {})[r["example_id"], r["sample"]] = r
    assert sorted(chains) == [1, 2, 3], (path, sorted(chains))
    assert all(r["attack"] == "prefill" and r["stage"].endswith(":prefill") for r in chains[1].values())
    for k in (2, 3):
        assert set(chains[k]) == set(chains[1]), (path, k)
        for key, r in chains[k].items():
            before, settings = chains[k - 1][key], r["settings"]
            injected = f"{settings['ipr_transition']} {chains[1][key]['injected']}"
            assert r["attack"] == "ipr" and r["injected"] == injected, (path, k, key)
            own = round_reasoning(before["completion"])
            assert r["prompt_text"] == before["prompt_text"] + own + settings["ipr_separator"] + injected, (k, key)
    return chains


@pytest.mark.slow
def test_quick_demo_writes_summary_report_and_plots(tmp_path):
    out = tmp_path / "demo"
    # A subprocess, not CliRunner: the demo's worker pool uses the spawn start method.
    proc = subprocess.run(
        [sys.executable, "-m", "recap.cli", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    # One progress line per RL run (from the workers, through a queue), and nothing of TRL's or the hub's own.
    assert "train recap seed 0" in proc.stderr and "train vanilla seed 0" in proc.stderr
    assert "{'loss'" not in proc.stdout + proc.stderr and "Writing model shards" not in proc.stdout + proc.stderr

    summary = json.loads((out / "summary.json").read_text())
    assert {"wall_seconds", "seeds", "methods"} <= set(summary)
    assert summary["seeds"] == [0]
    assert summary["wall_seconds"] > 0
    assert set(summary["methods"]) == {"base", "vanilla", "recap"}
    for method in ("base", "vanilla", "recap"):
        stats = summary["methods"][method]
        # every condition of the paper, plus the malformed share of each attack
        # (H-CoT, the unseen generator and the adaptive attacker run with --compare only)
        compare_only = {
            "attack_hcot_success",
            "attack_prefill_unseen_success",
            "attack_adaptive_worst_case",
            "safety_hcot",
            "safety_prefill_unseen",
            "safety_adaptive",
        }
        wanted = (set(METRICS) - compare_only) | {
            "attack_ipr2_success",
            "attack_ipr3_success",
            "invalid_ipr2",
            "invalid_ipr3",
            "safety_ipr2",
            "safety_ipr3",
        }
        assert wanted <= set(stats), (method, sorted(wanted - set(stats)))
        for metric, s in stats.items():
            assert s["n"] == 1 and s["std"] == 0.0, (method, metric, s)  # one seed: no spread
            if metric in COUNTS:
                assert s["mean"] > 0 and s["ci"] is None, (method, metric, s)  # the model writes something
            else:
                assert 0.0 <= s["mean"] <= 1.0, (method, metric, s)
                if metric.startswith(MEANS):
                    assert s["ci"] is None, (method, metric, s)
                else:  # a rate: every one has its pooled Wilson interval, and it holds the rate
                    assert s["ci"][0] <= s["mean"] <= s["ci"][1] and s["samples"] > 0, (method, metric, s)
        # round 1 of IPR is the prefilling attack itself: its rate is that of the stored round-1 samples
        round1 = ipr_chains(out / "results" / f"{method}-seed0.jsonl")[1]
        unsafe_share = sum(r["safe"] is False for r in round1.values()) / len(round1)
        assert stats["attack_ipr1_success"]["mean"] == pytest.approx(unsafe_share), method
        # safe, unsafe and malformed partition the samples of every attack (the world's judge knows both)
        for attack in ("prefill", "hijack", "ipr2", "ipr3"):
            safe, unsafe = stats[f"safety_{attack}"]["mean"], stats[f"attack_{attack}_success"]["mean"]
            assert safe + unsafe + stats[f"invalid_{attack}"]["mean"] == pytest.approx(1.0), (method, attack)

    assert (out / "report.md").is_file()
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in html
    assert "http://" not in html and "https://" not in html  # self-contained: nothing fetched
    assert "One seed: no spread" in html and "pipeline check" in (out / "report.md").read_text(encoding="utf-8")
    for plot in ("attack_success.png", "reflection_rate.png", "overrefusal.png"):
        assert (out / plot).is_file() and (out / plot).stat().st_size > 0
