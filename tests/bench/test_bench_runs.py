"""The benchmark command keeps working: a smoke-sized run of one scenario
writes its results, the plot and the target table. (Numbers are not judged
here; benchmarks are not pass/fail tests.)"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: A whole bench run (Rasa processes, both builds): about two minutes alone,
#: several times that on a loaded 2-core machine beside three other workers.
RUN_TIMEOUT_S = 600
# Longer than the run's own timeout, so that a slow run fails here with its
# output instead of the suite-wide timeout ending the worker (as it did once,
# at 300 s, with no output at all).
pytestmark = pytest.mark.timeout(RUN_TIMEOUT_S + 60)


def test_a_quick_benchmark_run_writes_results_and_a_plot(tmp_path, demo_model):
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "handoff_start", "--output", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads((tmp_path / "latest-quick.json").read_text())
    for backend in ("virtual_agent", "connect"):
        start = results["scenarios"]["handoff_start"][backend]["start_ms"]
        assert start["count"] > 0 and start["median"] > 0
    assert (tmp_path / "latest-quick.png").stat().st_size > 10_000
    assert "5. handoff start, connect" in completed.stdout


def test_a_side_by_side_run_measures_each_build_and_writes_the_comparison(tmp_path, demo_model):
    # The same environment under a second name: the mechanism, not a finding.
    completed = subprocess.run(
        [
            sys.executable, "-m", "bench", "--quick", "--only", "channel_level", "--build", f"twin={sys.executable}",
            "--runs", "1", "--output", str(tmp_path),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads((tmp_path / "latest-quick-side-by-side.json").read_text())
    comparison = results["comparison"]
    assert comparison["builds"] == ["this", "twin"]
    assert results["meta"]["builds"]["this"]["commit"] and results["meta"]["load"]["before"]["cpus"] >= 1
    forward = next(m for m in comparison["measures"] if m["path"] == "channel_level/virtual_agent/forward_ms/median")
    assert forward["builds"]["this"]["median"] > 0 and forward["builds"]["twin"]["ratio"] > 0
    assert "this/twin" in completed.stdout and "9. channel level, agent to user, stream: median" in completed.stdout
