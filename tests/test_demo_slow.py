"""`recap demo --quick --compare` end to end (about 3 minutes on 2 cores): checks the plumbing — every
method (vanilla, RECAP, on-policy, mixed) trains, every attack (the stronger ones included) is evaluated,
the on-policy buffers fill, and the summary, report and plots are written — not the size of the effect."""

import json
import subprocess
import sys

import pytest

from recap.eval.metrics import METRICS

COUNTS = ("reasoning_tokens", "answer_tokens")


@pytest.mark.slow
def test_quick_demo_writes_summary_report_and_plots(tmp_path):
    out = tmp_path / "demo"
    # A subprocess, not CliRunner: the demo's worker pool uses the spawn start method.
    proc = subprocess.run([sys.executable, "-m", "recap.cli", "demo", "--quick", "--compare", "--out", str(out)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr

    summary = json.loads((out / "summary.json").read_text())
    assert {"wall_seconds", "seeds", "methods"} <= set(summary)
    assert summary["seeds"] == [0]
    assert summary["wall_seconds"] > 0
    buffers = summary["onpolicy_buffers"]
    assert set(buffers) == {"on_policy", "mixed"}
    for b in buffers.values():
        assert 0 < b["size"] <= 256 and b["refresh_rate"] > 0 and 0 < b["cut_fraction_mean"] <= 1
    assert buffers["mixed"]["on_policy_share"] < buffers["on_policy"]["on_policy_share"]
    for method in ("base", "vanilla", "recap", "on_policy", "mixed"):
        stats = summary["methods"][method]
        assert set(METRICS) <= set(stats), (method, sorted(set(METRICS) - set(stats)))
        for metric in METRICS:
            s = stats[metric]
            assert s["n"] == 1, (method, metric, s)
            assert s["std"] >= 0, (method, metric, s)
            if metric in COUNTS:
                assert s["mean"] >= 0, (method, metric, s)
            else:
                assert 0.0 <= s["mean"] <= 1.0, (method, metric, s)

    assert (out / "report.md").is_file()
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in html
    assert "http://" not in html and "https://" not in html  # self-contained: nothing fetched
    assert "on_policy buffer (mean over seeds)" in (out / "report.md").read_text(encoding="utf-8")
    for plot in ("attack_success.png", "reflection_rate.png", "stronger_attacks.png"):
        assert (out / plot).is_file() and (out / plot).stat().st_size > 0
