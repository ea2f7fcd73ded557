"""Stopping the servers a killed worker leaves behind.

pytest-timeout's thread method ends a worker with ``os._exit``, so no fixture
teardown runs, and the servers its tests started (``rasa run``, the emulator,
``redis-server``) kept running for the rest of the run (seen: 45 minutes),
loading the 2-core CI machine until later tests failed. So a test that starts
a long-lived child records it (:func:`register`), and the xdist controller,
when a worker goes down with an error and again when the session ends, stops
the recorded children whose worker is gone: SIGTERM, then SIGKILL after
``TERM_GRACE_S``.

A record holds the child's pid and start time (``/proc/<pid>/stat``): a pid
the kernel has given to another process since is never signalled. It holds the
pid and start time of the worker that started it too: the children of a
worker that is alive are never touched, its own teardown stops them. Not
``PR_SET_PDEATHSIG``: it fires when the *thread* that forked exits, and
tests/e2e/test_replicas_restart.py restarts servers from short-lived threads.

Without xdist nothing is recorded (the process that started the children
would be the one sweeping them), nor off Linux (no /proc). tests/conftest.py
loads this module as a plugin; another pytest run can with ``-p tests.children``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Protocol, Tuple, TypeVar

import pytest

#: The key of xdist's ``workerinput`` that tells a worker where to record.
WORKERINPUT_KEY = "servicenow_children_dir"
#: Seconds a child has to exit on SIGTERM before it gets SIGKILL.
TERM_GRACE_S = 5.0
#: Seconds to wait for the children to be gone after SIGKILL.
KILL_WAIT_S = 2.0
#: Seconds the controller waits for a worker reported down to have exited: the
#: controller sees the channel close as the worker's files are closed, a moment
#: before the process ends, and a live worker's children are left alone.
WORKER_EXIT_S = 5.0
POLL_S = 0.05
#: States of a process that has exited (a zombie awaits only its parent's wait()).
EXITED = ("Z", "X", "x")

_FOLDER = pytest.StashKey[Path]()

#: Where this worker records (set from ``workerinput``); None: nowhere.
_folder: Optional[Path] = None
_worker = ""


class _HasPid(Protocol):
    @property
    def pid(self) -> int: ...


Process = TypeVar("Process", bound=_HasPid)


class ChildrenWarning(pytest.PytestWarning):
    """Stopping a killed worker's children went wrong; the run goes on."""


class Stat(NamedTuple):
    state: str
    pgrp: int
    start: int


def stat(pid: int) -> Optional[Stat]:
    """The state, process group and start time (clock ticks since boot) of ``pid``; None when there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            text = file.read().decode(errors="replace")
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces and parentheses itself.
    fields = text[text.rindex(")") + 2:].split()
    return Stat(fields[0], int(fields[2]), int(fields[19]))


def running(pid: int, start: int) -> bool:
    """Whether ``pid`` is still the process that started at ``start``, and has not exited."""
    found = stat(pid)
    return found is not None and found.start == start and found.state not in EXITED


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def register(process: Process) -> Process:
    """Record a long-lived child (a ``subprocess.Popen`` or an asyncio
    ``Process``) for the controller to stop if this worker dies before its
    teardown does; returns it. A child started with ``start_new_session=True``
    is stopped with its process group."""
    folder = _folder
    if folder is None:
        return process
    pid = process.pid
    try:
        child, me = stat(pid), stat(os.getpid())
        if child is None or me is None or child.state in EXITED:
            return process
        record = {
            "pid": pid, "start": child.start, "group": child.pgrp == pid,
            "parent": os.getpid(), "parent_start": me.start, "worker": _worker,
        }
        name = f"{pid}-{child.start}"
        # Whole or not at all: the controller may read the folder at any time.
        partial = folder / f".{name}.partial"
        partial.write_text(json.dumps(record))
        os.replace(partial, folder / f"{name}.json")
    except Exception as error:  # bookkeeping must not fail the test that starts a server
        import warnings

        warnings.warn(ChildrenWarning(f"could not record child {pid} for cleanup: {error!r}"))
    return process


# -- the sweep (on the controller) ----------------------------------------------------------------------------------


def _poll(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)  # wait-ok: polling a condition with a deadline
    return True


def _group(pgid: int) -> Dict[int, Stat]:
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            member = stat(int(name))
            if member is not None and member.pgrp == pgid:
                found[int(name)] = member
    return found


class _Target:
    """A recorded child, or its process group, while it is known to be the one recorded. A group
    is known by a process seen in it: one whose leader has gone before the sweep is left alone,
    as a later group that was given the same number would look the same."""

    def __init__(self, record: Dict[str, Any]) -> None:
        self.pid: int = record["pid"]
        self.group: bool = record["group"]
        self.known: Dict[int, int] = {self.pid: record["start"]}
        self.name = f"pid {self.pid}"

    def describe(self) -> None:
        # When it is about to be stopped, not when recorded: just past exec() a child may not show its arguments yet.
        self.name = f"{_cmdline(self.pid)[:100]} (pid {self.pid}{', its process group' if self.group else ''})"

    def alive(self) -> bool:
        if not self.group:
            return running(self.pid, self.known[self.pid])
        members = _group(self.pid)
        if not any(self.known.get(pid) == member.start for pid, member in members.items()):
            return False
        self.known = {pid: member.start for pid, member in members.items()}
        return any(member.state not in EXITED for member in members.values())

    def signal(self, sig: int) -> None:
        try:
            if self.group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass


def sweep(folder: Path, worker: Optional[str] = None, worker_exit_s: float = 0.0,
          grace_s: float = TERM_GRACE_S) -> Tuple[List[str], List[str]]:
    """Stop the children recorded in ``folder`` whose worker has exited; first
    wait up to ``worker_exit_s`` for ``worker``'s to have. Returns what was
    stopped and what went wrong."""
    problems: List[str] = []
    records: List[Tuple[Path, Dict[str, Any]]] = []
    for path in sorted(folder.glob("*.json")):
        try:
            records.append((path, json.loads(path.read_text())))
        except (OSError, ValueError) as error:
            problems.append(f"unreadable record {path.name}: {error!r}")
    if worker is not None and worker_exit_s > 0:
        own = [record for _, record in records if record.get("worker") == worker]
        _poll(lambda: not any(running(record["parent"], record["parent_start"]) for record in own), worker_exit_s)

    targets: List[Tuple[Path, _Target]] = []
    for path, record in records:
        target = _Target(record)
        if not target.alive():
            path.unlink(missing_ok=True)
        elif not running(record["parent"], record["parent_start"]):
            target.describe()
            targets.append((path, target))
    for _, target in targets:
        target.signal(signal.SIGTERM)

    def gone(within: float) -> List[Tuple[Path, _Target]]:
        _poll(lambda: not any(target.alive() for _, target in targets), within)
        return [(path, target) for path, target in targets if target.alive()]

    stubborn = gone(grace_s)
    for _, target in stubborn:
        target.signal(signal.SIGKILL)
    left = [target for _, target in gone(KILL_WAIT_S)] if stubborn else []
    problems += [f"still running after SIGKILL: {target.name}" for target in left]
    stopped = []
    for path, target in targets:
        if target not in left:
            path.unlink(missing_ok=True)
            stopped.append(target.name)
    return stopped, problems


def _report(config: pytest.Config, when: str, stopped: List[str], problems: List[str]) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if stopped and reporter is not None:
        reporter.write_line(f"{when}: stopped what a gone worker left running: " + "; ".join(stopped))
    for problem in problems:
        _warn(config, f"{when}: {problem}")


def _warn(config: pytest.Config, message: str) -> None:
    try:
        config.issue_config_time_warning(ChildrenWarning(message), stacklevel=2)
    except Exception:  # e.g. -W error: the warning is raised, and this must not end the run
        sys.stderr.write(f"warning: {message}\n")


def _sweep(config: pytest.Config, when: str, worker: Optional[str] = None, worker_exit_s: float = 0.0) -> None:
    folder = config.stash.get(_FOLDER, None)
    if folder is None:
        return
    try:
        _report(config, when, *sweep(folder, worker, worker_exit_s))
    except Exception as error:
        _warn(config, f"{when}: stopping a gone worker's children failed: {error!r}")


# -- hooks ----------------------------------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    global _folder, _worker
    workerinput = getattr(config, "workerinput", None)
    if workerinput and workerinput.get(WORKERINPUT_KEY) and Path("/proc/self/stat").exists():
        _folder, _worker = Path(workerinput[WORKERINPUT_KEY]), workerinput.get("workerid", "")


def pytest_unconfigure(config: pytest.Config) -> None:
    global _folder
    if getattr(config, "workerinput", None) is not None:
        _folder = None


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    try:
        folder = node.config.stash.get(_FOLDER, None)
        if folder is None:
            folder = node.config.stash[_FOLDER] = Path(tempfile.mkdtemp(prefix="pytest-children-"))
        node.workerinput[WORKERINPUT_KEY] = str(folder)
    except Exception as error:
        _warn(node.config, f"the workers' children will not be recorded: {error!r}")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    # A worker that finished normally ran its teardown; the session's end sweeps anyway.
    if error:
        worker = node.workerinput.get("workerid")
        _sweep(node.config, f"[{worker}] went down", worker, WORKER_EXIT_S)


@pytest.hookimpl(hookwrapper=True)
def pytest_sessionfinish(session: pytest.Session) -> Any:
    # After xdist's own sessionfinish: the workers are down by then.
    yield
    folder = session.config.stash.get(_FOLDER, None)
    if folder is not None:
        _sweep(session.config, "at session end")
        shutil.rmtree(folder, ignore_errors=True)
