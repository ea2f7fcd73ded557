"""tests/children.py: the servers of a worker that pytest-timeout killed are
stopped; those of a live worker are not, nor a process that took a recorded pid."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from tests import children
from tests.e2e.harness import wait_for

ROOT = Path(__file__).resolve().parents[1]
LINGERER = [sys.executable, "-c", "import signal; signal.alarm(120); signal.pause()"]

# Two workers, a test each (--dist load: a scope scheduler would run the
# crashed test again on the replacement worker). "hang" starts a child and a
# process group, then outruns its 2-second timeout; "survivor", on the other
# worker at the same time, starts a child, sees the dead worker's children go,
# and its own still run until its fixture's teardown stops it. Each side notes
# pids in SHARED for the other and for the test that runs this file. Children
# wait for a signal, and their own alarm ends them after 120 s: a broken sweep
# leaks them for two minutes at most.
INNER = textwrap.dedent('''
    import json, os, shlex, subprocess, sys, threading, time
    from pathlib import Path

    import pytest

    from tests import children

    SHARED = Path(os.environ["CHILDREN_TEST_SHARED"])
    LINGERER = [sys.executable, "-c", "import signal; signal.alarm(120); signal.pause()"]


    def note(name, **facts):
        (SHARED / f"{name}.partial").write_text(json.dumps(facts))
        os.replace(SHARED / f"{name}.partial", SHARED / f"{name}.json")


    def read(name):
        path = SHARED / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None


    def poll(condition, what, timeout=30):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)  # wait-ok: polling a condition with a deadline


    def identity(pid):
        return {"pid": pid, "start": children.stat(pid).start}


    @pytest.fixture
    def started():
        # In a fixture (timeout_func_only): the 2 s are the test body's alone.
        poll(lambda: read("survivor"), "the survivor's child")
        plain = children.register(subprocess.Popen(LINGERER))
        group = children.register(subprocess.Popen(
            ["sh", "-c", f"{shlex.join(LINGERER)} & echo $! > {SHARED / 'grandchild'}; wait"],
            start_new_session=True))
        poll(lambda: (SHARED / "grandchild").read_text().strip() if (SHARED / "grandchild").exists() else "",
             "the group's second process")
        grandchild = int((SHARED / "grandchild").read_text())
        note("hang", worker=os.getpid(), plain=identity(plain.pid), group=identity(group.pid),
             grandchild=identity(grandchild))


    @pytest.mark.timeout(2)
    def test_hang(started):
        threading.Event().wait()


    @pytest.fixture
    def own_child():
        process = children.register(subprocess.Popen(LINGERER))
        note("survivor", worker=os.getpid(), child=identity(process.pid))
        yield process
        note("teardown", alive=process.poll() is None)
        process.terminate()
        process.wait(timeout=10)


    @pytest.mark.timeout(60)
    def test_survivor(own_child):
        poll(lambda: read("hang"), "the hanging test's children")
        hang = read("hang")
        assert hang["worker"] != os.getpid()
        poll(lambda: not any(children.running(**hang[name]) for name in ("plain", "group", "grandchild")),
             "the dead worker's children to be stopped")
        assert own_child.poll() is None
''')


def noted(shared: Path) -> Dict[str, Dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in shared.glob("*.json")}


def identities(facts: Dict[str, Any]) -> List[Dict[str, int]]:
    return [value for value in facts.values() if isinstance(value, dict)]


@pytest.mark.timeout(120)
def test_a_killed_workers_children_are_stopped_and_a_live_workers_run_until_its_teardown(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (tmp_path / "pytest.ini").write_text("[pytest]\ntimeout_method = thread\ntimeout_func_only = true\n")
    (tmp_path / "test_inner.py").write_text(INNER)
    env = {name: value for name, value in os.environ.items() if not name.startswith("PYTEST_")}
    env.update(PYTHONPATH=str(ROOT), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", CHILDREN_TEST_SHARED=str(shared))
    try:
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "xdist", "-p", "timeout", "-p", "tests.children",
             "-p", "no:cacheprovider", "-n", "2", "--dist", "load", "-q", "test_inner.py"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90,
        )
        output = run.stdout + run.stderr
        assert "1 failed, 1 passed" in output, output
        # Nothing but the 2-second timeout ends test_hang's wait.
        assert "crashed while running 'test_inner.py::test_hang'" in output, output
        assert "went down: stopped what a gone worker left running" in output, output
        notes = noted(shared)
        for identity in identities(notes["hang"]):
            wait_for(lambda: not children.running(**identity), what=f"{identity} to be stopped")
        assert notes["teardown"] == {"alive": True}
        assert not children.running(**notes["survivor"]["child"])
    finally:
        for facts in noted(shared).values():
            for identity in identities(facts):
                if children.running(**identity):
                    os.kill(identity["pid"], signal.SIGKILL)


# -- the sweep itself, in this process ------------------------------------------------------------------------------


@pytest.fixture
def lingerer() -> Iterator["subprocess.Popen[bytes]"]:
    process = subprocess.Popen(LINGERER)
    yield process
    process.kill()
    process.wait()


def record(folder: Path, process: "subprocess.Popen[bytes]", **overrides: Any) -> Path:
    found = children.stat(process.pid)
    assert found is not None
    facts = {"pid": process.pid, "start": found.start, "group": False,
             "parent": os.getpid(), "parent_start": children.stat(os.getpid()).start, "worker": "gw9", **overrides}
    path = folder / f"{process.pid}-{facts['start']}.json"
    path.write_text(json.dumps(facts))
    return path


def gone_parent() -> Dict[str, int]:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    return {"parent": finished.pid, "parent_start": -1}


def test_a_child_of_a_live_worker_is_left_alone(tmp_path, lingerer):
    path = record(tmp_path, lingerer)
    assert children.sweep(tmp_path, grace_s=0.5) == ([], [])
    assert lingerer.poll() is None and path.exists()


def test_a_process_that_took_a_recorded_pid_is_left_alone(tmp_path, lingerer):
    path = record(tmp_path, lingerer, start=children.stat(lingerer.pid).start - 1, **gone_parent())
    assert children.sweep(tmp_path, grace_s=0.5) == ([], [])
    assert lingerer.poll() is None and not path.exists()


def test_a_gone_workers_child_is_terminated_and_its_record_removed(tmp_path, lingerer):
    path = record(tmp_path, lingerer, **gone_parent())
    stopped, problems = children.sweep(tmp_path, grace_s=5)
    assert (stopped, problems) == ([f"{' '.join(LINGERER)} (pid {lingerer.pid})"], [])
    assert lingerer.wait(timeout=5) == -signal.SIGTERM and not path.exists()


def test_a_child_that_ignores_sigterm_gets_sigkill(tmp_path):
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                 "print('ready', flush=True); signal.alarm(120); signal.pause()"], stdout=subprocess.PIPE)
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
        record(tmp_path, stubborn, **gone_parent())
        stopped, problems = children.sweep(tmp_path, grace_s=0.3)
        assert len(stopped) == 1 and problems == []
        assert stubborn.wait(timeout=5) == -signal.SIGKILL
    finally:
        stubborn.kill()
        stubborn.wait()
