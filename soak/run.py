"""One soak run, start to finish: start the cluster, let the users and
agents loose while the faults play, let everyone finish, wait for the
system to go quiet, read the final state and the emulator's records, and
hand the history to the checker."""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import aiohttp
import redis.asyncio as redis_client

from soak import checker, report
from soak.agents import AgentDesk
from soak.cluster import Cluster, Options
from soak.faults import FaultInjector
from soak.history import Recorder
from soak.plan import FAULT_KINDS, fault_schedule, user_ids
from soak.receiver import Receiver
from soak.users import Shared, User

#: The system is quiet when nothing reached any user for this long and ServiceNow has no push left to make.
QUIET_S = 20.0
DRAIN_DEADLINE_S = 300.0
QUIET_DEADLINE_S = 240.0
GIVE_UP = re.compile(r"Giving up delivering a \w+ item to the callback for (\S+) after")


@dataclass
class Arguments:
    duration: float = 600.0
    seed: int = 1
    users: int = 200
    replicas: int = 3
    apis: List[str] = field(default_factory=lambda: ["virtual_agent", "connect"])
    faults: List[str] = field(default_factory=lambda: list(FAULT_KINDS))
    callback: bool = True
    workdir: Path = Path("/tmp/soak")
    model: Path = Path("models/demo.tar.gz")
    options: Options = field(default_factory=Options)


async def soak(args: Arguments, say: Any = print) -> "tuple[Dict[str, Any], Dict[str, Any]]":
    """Run the soak; returns the checker's report and the run's meta data (CPU, timings, log findings)."""
    args.workdir.mkdir(parents=True, exist_ok=True)
    schedule = fault_schedule(args.seed, args.duration, args.faults, args.apis, args.replicas)
    ramp_up = min(30.0, args.duration * 0.1)
    meta = {
        "seed": args.seed, "duration": args.duration, "users": args.users, "replicas": args.replicas,
        "apis": args.apis, "faults_chosen": args.faults, "callback": args.callback,
        "poll_interval": args.options.poll_interval, "request_timeout": args.options.request_timeout,
        "push_retries": args.options.push_retries, "reconcile": "virtual_agent" in args.apis,
        "reconcile_interval": args.options.reconcile_interval, "schedule": [f.as_dict() for f in schedule],
        "workdir": str(args.workdir),
    }
    recorder = Recorder(meta)
    users: Dict[str, User] = {}

    def deliver(recipient: str, payload: Dict[str, Any], arrived: float) -> None:
        user = users.get(recipient)
        if user is not None:
            user.on_callback(payload, arrived)

    receiver = Receiver(deliver)
    await receiver.start()
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=False))
    cluster = Cluster(args.workdir, args.model, args.apis, args.replicas, args.seed,
                      receiver.url if args.callback else None, args.options)
    own_cpu_before = _own_cpu()
    try:
        say(f"soak: starting redis-server, the emulator and {args.replicas} replicas per API in {args.workdir} ...")
        started = time.time()
        await cluster.start(http)
        say(f"soak: cluster up in {time.time() - started:.0f} s; {args.users} users for {args.duration:.0f} s, "
            f"{len(schedule)} faults planned (seed {args.seed})")
        assert cluster.emulator is not None
        shared = Shared(http, recorder, args.seed, args.replicas, ramp_up)
        for uid, api in user_ids(args.users, args.apis):
            users[uid] = User(uid, api, cluster.deployments[api].url, shared)
        desk = AgentDesk(cluster.emulator.url, http, recorder, args.seed)
        load_started = time.time()
        meta["load_started"] = load_started
        cpu_at_start = {**cluster.cpu(), "load generator": _own_cpu()}
        injector = FaultInjector(cluster, receiver, recorder, schedule, http, load_started, args.duration)
        loop = asyncio.get_running_loop()
        user_tasks = [loop.create_task(user.run()) for user in users.values()]
        desk_task = loop.create_task(desk.run())
        fault_task = loop.create_task(injector.run())
        meta["load_average"] = []
        progress = loop.create_task(_progress(say, recorder, load_started, args.duration, injector))

        await asyncio.sleep(args.duration)  # wait-ok: the length of the load is the run's parameter
        meta["load_seconds"] = time.time() - load_started
        cpu_now = {**cluster.cpu(), "load generator": _own_cpu()}
        meta["cpu_during_load"] = {name: round(cpu_now[name] - cpu_at_start.get(name, 0.0), 1) for name in cpu_now}
        meta["cpu_during_load"]["wall"] = round(meta["load_seconds"], 1)
        say("soak: load over; users finish their chats ...")
        shared.finishing.set()
        desk.finishing.set()
        await _bounded(fault_task, DRAIN_DEADLINE_S, "the last fault to be lifted", say)
        await _bounded(asyncio.gather(*(u.done.wait() for u in users.values())), DRAIN_DEADLINE_S, "users to finish", say)
        meta["left_open_by_agents"] = await desk.close_what_is_left()
        await _bounded(desk_task, 30, "the agents to stop", say)
        progress.cancel()
        say("soak: waiting for the system to go quiet ...")
        meta["quiet_after_s"] = await _quiet(shared, cluster, http)
        await _final_state(cluster, users, recorder, http)
        await _remedy(cluster, users, recorder, http)
        shared.streams_off.set()
        await _bounded(asyncio.gather(*user_tasks, return_exceptions=True), 30, "streams to close", say)
        await _snapshot(cluster, recorder, http)
        logs = _replica_logs(cluster)
        recorder.history["callback_giveups"] = _callback_giveups(logs)
        meta["log_errors"] = _log_errors(logs)
        recorder.history["replica_tracebacks"] = _tracebacks(logs)
        meta["cpu"] = {**cluster.cpu(), "load generator": round(_own_cpu() - own_cpu_before, 1),
                       "wall": round(time.time() - load_started, 1)}
        meta["agent_control_errors"] = desk.control_errors
        meta["callback_posts"] = receiver.posts
    finally:
        await asyncio.to_thread(cluster.stop)
        await receiver.stop()
        await http.close()
    recorder.write(args.workdir / "history.json")
    return checker.check(recorder.history), meta


async def _progress(say: Any, recorder: Recorder, started: float, duration: float, injector: FaultInjector) -> None:
    while True:
        await asyncio.sleep(30)  # wait-ok: how often progress is printed
        h = recorder.history
        # The machine's load (other people's work included): the run's timings mean little without it.
        h["meta"]["load_average"].append(round(os.getloadavg()[0], 2))
        say(f"soak: {time.time() - started:4.0f}/{duration:.0f} s  handoffs "
            f"{sum(1 for e in h['user_events'] if e['what'] == 'handoff_started')}  user msgs "
            f"{sum(1 for s in h['sends'] if s['kind'] == 'handoff')}  agent msgs {len(h['agent_sends'])}  "
            f"received {len(h['received'])}  faults {len(h['faults'])}"
            + (f"  (now: {injector.current})" if injector.current else ""))


async def _bounded(awaitable: Any, seconds: float, what: str, say: Any) -> None:
    try:
        await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(awaitable)), timeout=seconds)
    except asyncio.TimeoutError:
        say(f"soak: gave up waiting for {what} after {seconds:.0f} s (the checker will count what is missing)")


async def _quiet(shared: Shared, cluster: Cluster, http: aiohttp.ClientSession) -> float:
    """Wait until nothing reached any user for ``QUIET_S`` and the emulator has no push pending."""
    assert cluster.emulator is not None
    started = time.monotonic()
    while time.monotonic() - started < QUIET_DEADLINE_S:
        pending = None
        try:
            async with http.get(f"{cluster.emulator.url}/__emu/callbacks", params={"session": "-"}) as answer:
                pending = (await answer.json())["pending"]
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError):
            pass
        if pending == 0 and time.time() - shared.last_item_at >= QUIET_S:
            break
        await asyncio.sleep(1.0)  # wait-ok: polling a condition with a deadline
    return round(time.monotonic() - started, 1)


async def _handoff_state(cluster: Cluster, user: User, http: aiohttp.ClientSession,
                         store: "redis_client.Redis") -> Dict[str, Any]:
    deployment = cluster.deployments[user.api]
    record = await store.exists(f"{deployment.redis_prefix}h:{user.uid}")
    slot: Optional[bool] = None
    try:
        async with http.get(f"{deployment.url}/conversations/{user.uid}/tracker",
                            timeout=aiohttp.ClientTimeout(total=30)) as answer:
            if answer.status == 200:
                slot = bool((await answer.json()).get("slots", {}).get("handoff_active"))
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        pass
    return {"record": bool(record), "slot": slot}


async def _final_state(cluster: Cluster, users: Dict[str, User], recorder: Recorder, http: aiohttp.ClientSession) -> None:
    store = redis_client.Redis(port=cluster.redis.port)
    try:
        for user in users.values():
            recorder.history["final"][user.uid] = await _handoff_state(cluster, user, http, store)
    finally:
        await store.close()


async def _remedy(cluster: Cluster, users: Dict[str, User], recorder: Recorder, http: aiohttp.ClientSession) -> None:
    """A user still in a handoff at the end writes once more and then sends the end command; what is left after
    that is a user the channel keeps in a dead handoff."""
    stuck = [u for uid, u in users.items() if any(recorder.history["final"][uid].values())]
    if not stuck:
        return
    store = redis_client.Redis(port=cluster.redis.port)
    try:
        for user in stuck:
            before = recorder.history["final"][user.uid]
            await user.say("is anyone there", "remedy")
            if any((await _handoff_state(cluster, user, http, store)).values()):
                await user.say("/end_chat", "remedy")
            after = await _handoff_state(cluster, user, http, store)
            recorder.add("remedied", user=user.uid, before=before, after=after)
    finally:
        await store.close()


async def _snapshot(cluster: Cluster, recorder: Recorder, http: aiohttp.ClientSession) -> None:
    """The emulator's side: every chat's transcript and every push attempt."""
    assert cluster.emulator is not None
    base = f"{cluster.emulator.url}/__emu"
    async with http.get(f"{base}/sessions") as answer:
        sessions = (await answer.json())["sessions"]
    limit = asyncio.Semaphore(8)

    async def one(session: Dict[str, Any]) -> None:
        async with limit:
            async with http.get(f"{base}/transcript/{session['session']}") as answer:
                if answer.status != 200:
                    return
                body = await answer.json()
        recorder.history["transcripts"][session["session"]] = {
            "api": "virtual_agent" if session.get("api") == "va" else "connect",
            "state": session.get("state"),
            "messages": [{"text": m.get("message"), "created_by": m.get("created_by"), "timestamp": m.get("timestamp")}
                         for m in body.get("messages", [])],
            "events": [{"action": e.get("action"), "timestamp": e.get("timestamp")} for e in body.get("events", [])
                       if e.get("action") in ("END_CONVERSATION", "FAULT_CONVERSATION")],
        }

    await asyncio.gather(*(one(s) for s in sessions))
    async with http.get(f"{base}/callbacks") as answer:
        log = (await answer.json())["callbacks"]
    for attempt in log:
        body = (attempt.get("payload") or {}).get("body") or []
        recorder.add(
            "callbacks", callback_id=attempt["callback_id"], session=attempt["session"], attempt=attempt["attempt"],
            outcome=attempt["outcome"], status=attempt["status"], at=attempt["at_ms"] / 1000.0,
            latency_ms=attempt.get("latency_ms"),
            fault=attempt.get("fault"), duplicate=attempt.get("duplicate"),
            message_ids=[item["messageId"] for item in body if isinstance(item, dict) and item.get("messageId")],
            actions=[item.get("actionType") for item in body if isinstance(item, dict) and item.get("actionType")],
        )


def _replica_logs(cluster: Cluster) -> Dict[str, str]:
    """Each replica's log, by replica name, read once at the end of the run."""
    return {
        replica.name: replica.log_path.read_text(errors="replace")
        for deployment in cluster.deployments.values()
        for replica in deployment.replicas
    }


def _callback_giveups(logs: Dict[str, str]) -> List[str]:
    return [match.group(1) for text in logs.values() for match in GIVE_UP.finditer(text)]


def _log_errors(logs: Dict[str, str]) -> Dict[str, Dict[str, int]]:
    """Per replica: ERROR lines and tracebacks in its log (for the diagnosis)."""
    return {
        name: {"errors": len(re.findall(r"\bERROR\b", text)), "tracebacks": text.count("Traceback (most recent call last)")}
        for name, text in logs.items()
    }


def _tracebacks(logs: Dict[str, str]) -> List[Dict[str, Any]]:
    """Every traceback in the replicas' logs: the replica, the log line before it and the exception it ends
    with (the checker counts each against the docs)."""
    return [{"replica": name, **block} for name, text in logs.items() for block in traceback_blocks(text)]


#: Where a log line starts: Rasa's format (``2026-12-07 17:16:01 ERROR ...``) or Sanic's (``[2026-12-07 ...]``).
LOG_LINE = re.compile(r"^\[?\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d")


def traceback_blocks(text: str) -> List[Dict[str, str]]:
    """Each traceback in a log, chained ones as one: the last log line before it and the exception it ends with."""
    blocks: List[Dict[str, str]] = []
    logged = ""
    exception: Optional[str] = None
    for line in text.splitlines():
        if LOG_LINE.match(line):
            if exception is not None:
                blocks.append({"logged": logged[:300], "exception": exception[:300]})
                exception = None
            logged = line
        elif line.startswith("Traceback (most recent call last)"):
            exception = exception or ""
        elif exception is not None and line.strip() and not line[0].isspace() and not line.startswith(
                ("During handling of the above exception", "The above exception was the direct cause")):
            exception = line
    if exception is not None:
        blocks.append({"logged": logged[:300], "exception": exception[:300]})
    return blocks


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_results(result: Dict[str, Any], meta: Dict[str, Any], output: Path, stamp: str, suffix: str) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    document = {"meta": meta, "report": result}
    path = output / f"{stamp}{suffix}.json"
    for target in (path, output / f"latest{suffix}.json"):
        target.write_text(json.dumps(document, indent=2) + "\n")
    (output / f"latest{suffix}.md").write_text(report.markdown(result, meta) + "\n")
    return path
