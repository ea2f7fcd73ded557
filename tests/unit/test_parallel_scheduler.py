"""tests/parallel.py: a test that hangs is stopped, fails once, and the rest of its group still runs (a pytest run
with two xdist workers in a subprocess)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = '''
import asyncio
import pytest

@pytest.fixture(scope="module")
def shared():
    return 1

async def test_hangs(shared):
    await asyncio.Event().wait()

def test_after(shared):
    assert shared

def test_after_too(shared):
    assert shared
'''


def test_a_hung_async_test_fails_once_and_its_group_runs_on(tmp_path):
    (tmp_path / "test_probe.py").write_text(PROBE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\n")
    run = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-p", "tests.parallel", "-p", "no:cacheprovider", "-n", "2",
            "--dist", "loadgroup", "--timeout", "3", "--timeout-method", "thread", "-q", str(tmp_path),
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=240, env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )
    summary = run.stdout.strip().splitlines()[-1]
    assert "1 failed, 2 passed" in summary, run.stdout[-3000:] + run.stderr[-2000:]
    assert run.stdout.count("crashed while running") == 1
