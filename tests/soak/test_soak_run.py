"""The short soak of ``make test``: ``python -m soak --quick`` (150 s of
load, 40 users, three replicas per API, a fault schedule with kill -9, a
graceful restart, Redis stopped, ServiceNow failing and pushes repeated and
held back) must end with nothing lost, doubled or reordered beyond what the docs
allow. It needs ``redis-server``: skipped with the reason without it, a
failure under ``.ci/run`` (``REQUIRE_REDIS_TEST=1``)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.store.conftest import require_redis_server

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(1800)
def test_a_two_minute_soak_loses_nothing_the_docs_do_not_allow(tmp_path):
    require_redis_server()
    output = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-m", "soak", "--quick", "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=1700,
    )
    printed = run.stdout[-8000:] + run.stderr[-4000:]
    result_file = output / "latest-quick.json"
    assert result_file.exists(), f"the soak did not finish (exit {run.returncode}):\n{printed}"
    report = json.loads(result_file.read_text())["report"]

    # A run in which nothing happened could not fail: the load and the faults must have been there.
    assert report["load"]["handoffs"] >= 20, printed
    assert report["agent_to_user"]["sse"]["checked"] >= 50, printed
    assert report["user_to_agent"]["checked"] >= 50, printed
    ran = {fault["kind"] for fault in report["faults"] if fault.get("started") is not None}
    assert {"kill9", "redis"} <= ran, f"faults that ran: {sorted(ran)}\n{printed}"

    assert report["ok"], f"{report['against_docs']} finding(s) against the docs:\n{printed}"
    assert run.returncode == 0, printed
