"""How ``make test`` runs on several pytest-xdist workers (docs/testing.md).

Groups. Each test is given an ``xdist_group`` mark at collection, and a group
runs on one worker, in collection order:

* A test that uses a session-scoped server named in ``SHARED_SESSION_FIXTURES``
  (``rasa``: one ``rasa run`` per ServiceNow backend) joins the group of that
  instance, e.g. ``rasa(backend=connect)``: every test of every module that talks to
  the Connect server runs on the worker that started it, once.
* Otherwise a test that uses module- or class-scoped fixtures joins the group of
  its module (or class) and those fixtures' parameters, e.g.
  ``tests/e2e/test_waiting.py::waiting(waiting=connect)``: a module's own server starts
  once, and the same module's other servers can start on another worker.
* Any other test is scheduled on its own.

The cheap session fixtures (the emulator, the callback receiver, a
``redis-server``, free ports) are per worker: each worker has its own.

Order. The scheduler hands out the costliest group first (longest processing
time first), so the long groups run side by side from the start and the short
ones fill the gaps at the end. A group's cost is what its tests took in the last
run on this checkout (kept in ``.pytest_cache``), or an estimate by suite. A
worker busy with a long test is not given a long group to hold behind it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Optional

import pytest

#: Session-scoped fixtures that start something costly: their tests are kept together, per instance.
SHARED_SESSION_FIXTURES = {"rasa"}
#: Seconds a test takes, by suite, when no earlier run says (a group with a server adds its start).
ESTIMATE_S = {"tests/install": 120.0, "tests/bench": 10.0, "tests/e2e": 5.0, "tests/doctor": 0.5}
DEFAULT_ESTIMATE_S = 0.1
SERVER_START_S = 10.0
#: A worker whose pending tests are estimated to take longer than this gets only the cheapest group to queue.
BUSY_S = 30.0
CACHE_KEY = "servicenow/durations"


# -- groups (on each worker, at collection) -------------------------------------------------------------------------


def group_of(item: pytest.Item) -> Optional[str]:
    """The group an item runs in, or None when it may run anywhere."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return None
    definitions = info.name2fixturedefs
    callspec = getattr(item, "callspec", None)
    params: Dict[str, Any] = dict(callspec.params) if callspec is not None else {}

    def scope(name: str) -> str:
        return definitions[name][-1].scope if name in definitions else "function"

    def instance(names: Iterable[str]) -> str:
        """The fixtures, and the parameters above function scope that pick their instance."""
        chosen = sorted(names)
        picked = sorted(f"{name}={params[name]}" for name in params if scope(name) != "function")
        return ",".join(chosen) + (f"({','.join(picked)})" if picked else "")

    shared = [name for name in item.fixturenames if name in SHARED_SESSION_FIXTURES and scope(name) == "session"]
    if shared:
        return instance(shared)
    local = [name for name in item.fixturenames if scope(name) in ("module", "class", "package")]
    if local:
        owner = item.getparent(pytest.Class) if any(scope(name) == "class" for name in local) else None
        owner = owner or item.getparent(pytest.Module) or item
        return f"{owner.nodeid}::{instance(local)}"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue  # a test that names its group keeps it
        group = group_of(item)
        if group is not None:
            # xdist reads "]" as the end of a parameter id, not of a group name.
            item.add_marker(pytest.mark.xdist_group(group.replace("[", "(").replace("]", ")")))


# -- the order (on the controller) ----------------------------------------------------------------------------------


def estimate(nodeid: str, history: Dict[str, float]) -> float:
    test = nodeid.split("@", 1)[0]
    if test in history:
        return history[test]
    return next((seconds for suite, seconds in ESTIMATE_S.items() if test.startswith(suite + "/")), DEFAULT_ESTIMATE_S)


def make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadGroupScheduling

    cache = getattr(config, "cache", None)  # None under -p no:cacheprovider
    history: Dict[str, float] = cache.get(CACHE_KEY, {}) if cache is not None else {}

    class LongestFirst(LoadGroupScheduling):  # type: ignore[misc]
        """xdist's ``loadgroup``, handing out the costliest group first."""

        def _cost(self, scope: str, unit: Dict[str, bool]) -> float:
            seconds = sum(estimate(nodeid, history) for nodeid in unit)
            grouped = "@" in next(iter(unit), "")
            fresh = not any(nodeid.split("@", 1)[0] in history for nodeid in unit)
            return seconds + (SERVER_START_S if grouped and fresh else 0.0)

        def _pending_seconds(self, node: Any) -> float:
            return sum(
                estimate(nodeid, history)
                for unit in self.assigned_work.get(node, {}).values()
                for nodeid, done in unit.items()
                if not done
            )

        def _assign_work_unit(self, node: Any) -> None:
            costs = OrderedDict((scope, self._cost(scope, unit)) for scope, unit in self.workqueue.items())
            busy = self._pending_seconds(node) > BUSY_S
            chosen = (min if busy else max)(costs, key=costs.__getitem__)
            self.workqueue.move_to_end(chosen, last=False)
            super()._assign_work_unit(node)

        def _reschedule(self, node: Any) -> None:
            # A worker runs a test only once it holds the next one, so it asks
            # for work two tests before its end; a long test still ahead of a
            # queued group would hold that group back, so wait for the last one.
            if (
                not node.shutting_down and self.workqueue
                and self._pending_of(self.assigned_work[node]) == 2 and self._pending_seconds(node) > BUSY_S
            ):
                return
            super()._reschedule(node)

    return LongestFirst(config, log)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadgroup":
        return None
    return make_scheduler(config, log)


# -- what each test took, for the next run's order ------------------------------------------------------------------


class Durations:
    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        test = report.nodeid.split("@", 1)[0]
        self.seconds[test] = self.seconds.get(test, 0.0) + report.duration

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        cache = getattr(session.config, "cache", None)
        if cache is None or not self.seconds:
            return
        known: Dict[str, float] = cache.get(CACHE_KEY, {})
        known.update({test: round(seconds, 3) for test, seconds in self.seconds.items()})
        cache.set(CACHE_KEY, known)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "xdist_group(name): run with the other tests of this group on one worker")
    # On the controller (or a run without workers): the reports of every test arrive there.
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(Durations(), "servicenow-durations")
