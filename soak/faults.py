"""Plays the fault schedule of ``plan.py`` against the running cluster, one
fault at a time: each waits for its planned time and for the previous fault
to be lifted (a replica serving again, Redis answering, a rule removed), so
a slow restart on a busy machine shifts the schedule instead of piling
faults up. Every fault is recorded with when it really started and was
lifted; the checker measures recovery from the lift."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any, Dict, List, Optional

import aiohttp

from soak.cluster import Cluster
from soak.history import Recorder
from soak.plan import PlannedFault
from soak.receiver import Receiver

#: Inbound ServiceNow APIs a ServiceNow-side fault hits (the control plane and the pushes are never hit).
SERVICENOW_APIS = ("connect", "va")


class FaultInjector:
    def __init__(self, cluster: Cluster, receiver: Receiver, recorder: Recorder, schedule: List[PlannedFault],
                 http: aiohttp.ClientSession, load_started: float, load_seconds: float) -> None:
        self.cluster = cluster
        self.receiver = receiver
        self.recorder = recorder
        self.schedule = schedule
        self.http = http
        self.load_started = load_started
        self.load_seconds = load_seconds
        self.current: Optional[str] = None

    async def run(self) -> None:
        for planned in self.schedule:
            due = self.load_started + planned.at
            if due > time.time():
                await asyncio.sleep(due - time.time())  # wait-ok: the schedule's own clock
            record = self.recorder.add(
                "faults", kind=planned.kind, deployment=planned.deployment, replica=planned.replica,
                params=planned.params, planned_at=planned.at, planned_duration=planned.duration,
                started=None, lifted=None, rules=[], note="",
            )
            if time.time() + planned.duration > self.load_started + self.load_seconds:
                record["note"] = "skipped: the schedule ran late and the load ends before it would be lifted"
                continue
            self.current = planned.kind
            try:
                await self._apply(planned, record)
            finally:
                self.current = None

    async def _apply(self, fault: PlannedFault, record: Dict[str, Any]) -> None:
        kind = fault.kind
        if kind in ("kill9", "sigterm"):
            deployment = self.cluster.deployments.get(fault.deployment or "")
            if deployment is None:
                record["note"] = f"skipped: no {fault.deployment} deployment in this run"
                return
            replica = deployment.replicas[fault.replica or 0]
            replica.note(f"{kind} (soak fault)")
            record["started"] = await asyncio.to_thread(
                replica.signal, signal.SIGKILL if kind == "kill9" else signal.SIGTERM, 90.0
            )
            record["stopped"] = time.time()
            if fault.duration:
                await asyncio.sleep(fault.duration)  # wait-ok: the down time the fault plans
            await replica.start_and_wait(self.http)
            record["lifted"] = time.time()
            return
        if kind == "redis":
            redis = self.cluster.redis
            record["started"] = await asyncio.to_thread(redis.signal, signal.SIGTERM, 60.0)
            record["stopped"] = time.time()
            await asyncio.sleep(fault.duration)  # wait-ok: the down time the fault plans
            await redis.start_and_wait()
            record["lifted"] = time.time()
            return
        if kind == "slow_callback":
            record["started"] = time.time()
            self.receiver.delay = float(fault.params["delay_s"])
            await asyncio.sleep(fault.duration)  # wait-ok: the fault's window
            self.receiver.delay = 0.0
            record["lifted"] = time.time()
            return
        rules = _rules(fault)
        ids = await self._add_rules(rules)
        record["rules"] = ids
        for rule_id in ids:
            self.recorder.history["fault_rules"][rule_id] = {"kind": kind, **fault.params}
        record["started"] = time.time()
        await asyncio.sleep(fault.duration)  # wait-ok: the fault's window
        await self._clear_rules()
        record["lifted"] = time.time()

    async def _add_rules(self, rules: List[Dict[str, Any]]) -> List[str]:
        assert self.cluster.emulator is not None
        async with self.http.post(f"{self.cluster.emulator.url}/__emu/faults", json=rules) as answer:
            answer.raise_for_status()
            body = await answer.json()
        return [rule["id"] for rule in body["faults"][-len(rules):]]

    async def _clear_rules(self) -> None:
        assert self.cluster.emulator is not None
        async with self.http.delete(f"{self.cluster.emulator.url}/__emu/faults") as answer:
            answer.raise_for_status()


def _rules(fault: PlannedFault) -> List[Dict[str, Any]]:
    """The emulator's fault rules for a ServiceNow-side or push fault (connectors/servicenow/emulator/faults.py)."""
    p = fault.params
    probability = float(p.get("probability", 1.0))
    if fault.kind in ("sn_5xx", "sn_outage"):
        respond: Dict[str, Any] = {"status": int(p["status"])}
    elif fault.kind == "sn_timeout":
        respond = {"delay_ms": int(p["delay_ms"])}
    elif fault.kind == "sn_429":
        respond = {"status": 429, "headers": {"Retry-After": str(p["retry_after"])}}
    elif fault.kind == "push_drop":
        return [{"match": {"api": "callback"}, "respond": {"drop_connection": True}, "times": None, "probability": probability}]
    elif fault.kind == "push_repeat":
        return [{"match": {"api": "callback"}, "respond": {"duplicate": True}, "times": None, "probability": probability}]
    elif fault.kind == "push_reorder":
        return [{"match": {"api": "callback"}, "respond": {"delay_ms": int(p["delay_ms"])}, "times": None,
                 "probability": probability}]
    else:
        raise ValueError(f"no emulator rule for {fault.kind}")
    return [{"match": {"api": api}, "respond": respond, "times": None, "probability": probability}
            for api in SERVICENOW_APIS]
