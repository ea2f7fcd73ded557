"""The benchmark command keeps working: a smoke-sized run of one scenario
writes its results, the plot and the target table. (Numbers are not judged
here; benchmarks are not pass/fail tests.)"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_quick_benchmark_run_writes_results_and_a_plot(tmp_path, demo_model):
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "handoff_start", "--output", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads((tmp_path / "latest-quick.json").read_text())
    for backend in ("virtual_agent", "connect"):
        start = results["scenarios"]["handoff_start"][backend]["start_ms"]
        assert start["count"] > 0 and start["median"] > 0
    assert (tmp_path / "latest-quick.png").stat().st_size > 10_000
    assert "5. handoff start, connect" in completed.stdout
