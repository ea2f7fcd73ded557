"""The seeded part of a soak run: the fault schedule and every user's and
agent's script. Pure functions of the seed (and the run's size), so the same
seed replays the same schedule and the same scripts; what the machine does
with them (how long a restart takes, which request a fault rule happens to
hit) is not part of the plan and is recorded in the history instead."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

#: Every fault the soak knows, in the order the report lists them.
FAULT_KINDS: Tuple[str, ...] = (
    "kill9",          # kill -9 of a replica, started again after a while
    "sigterm",        # a graceful restart of a replica (SIGTERM, wait, start)
    "redis",          # redis-server stopped (SIGTERM: the AOF is flushed) and started again
    "sn_5xx",         # ServiceNow answers some calls with 500/502/503
    "sn_outage",      # ServiceNow answers every call with 503 for longer than the channel retries
    "sn_timeout",     # ServiceNow holds some calls longer than the channel's request_timeout
    "sn_429",         # ServiceNow rate-limits some calls with 429 and Retry-After
    "push_drop",      # a Virtual Agent push attempt is lost on the way (the connection drops)
    "push_repeat",    # a Virtual Agent push arrives twice
    "push_reorder",   # a Virtual Agent push is held back, so later ones overtake it
    "slow_callback",  # the frontend's callback_url answers slowly
)
#: Faults that need the Virtual Agent deployment (they act on pushes).
PUSH_FAULTS = ("push_drop", "push_repeat", "push_reorder")
RESTART_FAULTS = ("kill9", "sigterm")
#: Seconds a fault usually needs after its planned duration before it is lifted, on a busy two-core machine: a
#: replica's start (about 10 s), and for a graceful stop the 15 s Sanic waits for open streams first.
RECOVERY_BUDGET = {"kill9": 15.0, "sigterm": 35.0, "redis": 3.0}
APIS = ("virtual_agent", "connect")
SHORT_API = {"virtual_agent": "va", "connect": "cn"}


@dataclass(frozen=True)
class PlannedFault:
    kind: str
    #: Seconds after the load started at which the fault is due (it waits for the previous one to be lifted).
    at: float
    #: How long the fault lasts: the down time of a process, or the window of a fault rule.
    duration: float
    #: The deployment it hits (``virtual_agent`` or ``connect``), or ``None`` for both / shared parts.
    deployment: Optional[str] = None
    replica: Optional[int] = None
    params: Dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SessionPlan:
    """One handoff of one user, as both sides play it."""

    #: Messages the user writes to the agent, and the think time before each.
    user_messages: int
    user_gaps: Tuple[float, ...]
    #: Who ends the chat: the user (``/end_chat``) or the agent (close in the agent console).
    closer: str
    #: The user ends without waiting for the agent's last messages (so they race the end).
    impatient: bool
    #: Messages the agent writes, and the wait before each (0: a burst).
    agent_messages: int
    agent_gaps: Tuple[float, ...]
    #: The agent shows typing before some messages (Virtual Agent only).
    agent_typing: Tuple[bool, ...]
    #: The user sends typing before some messages.
    user_typing: Tuple[bool, ...]
    #: Seconds before asking for an agent after the bot's greeting.
    before_handoff: float
    #: Seconds of pause after the chat ended, before the user comes back.
    pause_after: float


@dataclass(frozen=True)
class UserProfile:
    """A user's habits across sessions."""

    #: Seconds after the load starts at which the user shows up.
    start_delay: float
    #: Lifetimes of the user's SSE connections: after each, the browser reconnects (to another replica, with
    #: ``Last-Event-ID``), and with ``gap`` > 0 only after the stream was closed that long (a tab in the background).
    stream_lifetimes: Tuple[float, ...]
    stream_gaps: Tuple[float, ...]


FILLER = (
    "my printer shows paper jam", "the vpn drops every hour", "I cannot open the invoice", "my laptop is slow",
    "the screen flickers", "password reset did not work", "the badge reader refuses me", "email is stuck in outbox",
    "the dock does not charge", "teams freezes on calls", "my license expired", "the portal shows error 42",
)
AGENT_FILLER = (
    "let me check that", "please try once more", "I have reset it on my side", "can you restart the app",
    "I see the ticket", "one moment please", "that should work now", "I escalated it to the network team",
)


def user_ids(users: int, apis: Sequence[str]) -> List[Tuple[str, str]]:
    """``(user id, api)`` for every user: the users are split evenly over the APIs, in turn."""
    return [(f"{SHORT_API[apis[i % len(apis)]]}-{i:04d}", apis[i % len(apis)]) for i in range(users)]


def user_profile(seed: int, user: str, ramp_up: float) -> UserProfile:
    rng = random.Random(f"{seed}/profile/{user}")
    lifetimes = tuple(rng.uniform(20.0, 70.0) for _ in range(64))
    gaps = tuple(rng.uniform(4.0, 15.0) if rng.random() < 0.2 else 0.0 for _ in range(64))
    return UserProfile(start_delay=rng.uniform(0.0, ramp_up), stream_lifetimes=lifetimes, stream_gaps=gaps)


def session_plan(seed: int, user: str, session: int) -> SessionPlan:
    """What user ``user`` and its agent do in the user's ``session``-th handoff (both sides compute it)."""
    rng = random.Random(f"{seed}/session/{user}/{session}")
    user_messages = rng.randint(2, 6)
    agent_messages = rng.randint(2, 5)
    burst = rng.random() < 0.25
    return SessionPlan(
        user_messages=user_messages,
        user_gaps=tuple(rng.uniform(1.5, 7.0) for _ in range(user_messages)),
        closer="agent" if rng.random() < 0.5 else "user",
        impatient=rng.random() < 0.2,
        agent_messages=agent_messages,
        agent_gaps=tuple(0.0 if burst and i else rng.uniform(1.0, 6.0) for i in range(agent_messages)),
        agent_typing=tuple(rng.random() < 0.3 for _ in range(agent_messages)),
        user_typing=tuple(rng.random() < 0.3 for _ in range(user_messages)),
        before_handoff=rng.uniform(0.5, 3.0),
        pause_after=rng.uniform(5.0, 25.0),
    )


def user_text(user: str, session: int, index: int, last: bool = False) -> str:
    """A user message the checker can find anywhere: ``u.<user>.<session>.<index>`` plus words. The words avoid
    the demo bot's keywords, so a message that wrongly reaches the bot does not start or end anything."""
    words = FILLER[(index + session) % len(FILLER)]
    return f"u.{user}.{session}.{index} {words}" + (" (last)" if last else "")


def agent_text(user: str, session: int, index: int) -> str:
    return f"a.{user}.{session}.{index} {AGENT_FILLER[(index + session) % len(AGENT_FILLER)]}"


def fault_schedule(seed: int, duration: float, kinds: Sequence[str], apis: Sequence[str], replicas: int) -> List[PlannedFault]:
    """Faults one after another (never two at once, so each recovery is its own), in a seeded order that goes
    through every chosen kind before repeating one. A quiet warm-up comes first and a quiet tail last."""
    kinds = [kind for kind in kinds if kind not in PUSH_FAULTS or "virtual_agent" in apis]
    if not kinds or duration <= 0:
        return []
    rng = random.Random(f"{seed}/faults")
    warm_up = min(30.0, max(8.0, duration * 0.08))
    tail = min(60.0, max(15.0, duration * 0.12))
    # Short runs get short faults: windows scale with the run, within bounds that still mean something.
    scale = min(1.0, max(0.4, duration / 600.0))
    planned: List[PlannedFault] = []
    at = warm_up
    order: List[str] = []
    while True:
        if not order:
            order = list(kinds)
            rng.shuffle(order)
        kind = order.pop(0)
        fault = _one_fault(rng, kind, at, scale, apis, replicas)
        if fault.at + fault.duration + RECOVERY_BUDGET.get(kind, 0.0) > duration - tail:
            break
        planned.append(fault)
        at = fault.at + fault.duration + RECOVERY_BUDGET.get(kind, 0.0) + rng.uniform(12.0, 30.0) * scale
    return planned


def _one_fault(rng: random.Random, kind: str, at: float, scale: float, apis: Sequence[str], replicas: int) -> PlannedFault:
    deployment = rng.choice(list(apis))
    if kind == "kill9":
        return PlannedFault(kind, at, rng.uniform(2.0, 8.0), deployment, rng.randrange(replicas))
    if kind == "sigterm":
        return PlannedFault(kind, at, 0.0, deployment, rng.randrange(replicas))
    if kind == "redis":
        return PlannedFault(kind, at, rng.uniform(4.0, 12.0) * max(scale, 0.6))
    if kind == "sn_5xx":
        return PlannedFault(
            kind, at, rng.uniform(10.0, 20.0) * scale,
            params={"status": rng.choice([500, 502, 503]), "probability": round(rng.uniform(0.2, 0.4), 2)},
        )
    if kind == "sn_outage":
        # Longer than the channel's retries (5 attempts, about 8 s of backoff plus the calls): handoffs end with
        # the documented summary.
        return PlannedFault(kind, at, rng.uniform(18.0, 25.0), params={"status": 503, "probability": 1.0})
    if kind == "sn_timeout":
        return PlannedFault(
            kind, at, rng.uniform(10.0, 15.0) * scale,
            params={"delay_ms": 6500, "probability": round(rng.uniform(0.15, 0.3), 2)},
        )
    if kind == "sn_429":
        return PlannedFault(
            kind, at, rng.uniform(10.0, 15.0) * scale,
            params={"retry_after": rng.randint(1, 3), "probability": round(rng.uniform(0.2, 0.4), 2)},
        )
    if kind == "push_drop":
        return PlannedFault(kind, at, rng.uniform(10.0, 20.0) * scale, "virtual_agent",
                            params={"probability": round(rng.uniform(0.2, 0.4), 2)})
    if kind == "push_repeat":
        return PlannedFault(kind, at, rng.uniform(10.0, 20.0) * scale, "virtual_agent",
                            params={"probability": round(rng.uniform(0.3, 0.5), 2)})
    if kind == "push_reorder":
        return PlannedFault(kind, at, rng.uniform(10.0, 20.0) * scale, "virtual_agent",
                            params={"delay_ms": 1500, "probability": round(rng.uniform(0.15, 0.3), 2)})
    if kind == "slow_callback":
        return PlannedFault(kind, at, rng.uniform(10.0, 20.0) * scale, params={"delay_s": round(rng.uniform(1.0, 2.0), 2)})
    raise ValueError(f"unknown fault kind {kind!r}; choose from {', '.join(FAULT_KINDS)}")


def parse_kinds(text: str) -> List[str]:
    """``all``, or a comma-separated list of fault kinds (``none`` for a run without faults)."""
    text = text.strip()
    if text in ("", "none"):
        return []
    if text == "all":
        return list(FAULT_KINDS)
    kinds = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [kind for kind in kinds if kind not in FAULT_KINDS]
    if unknown:
        raise ValueError(f"unknown fault kind(s) {', '.join(unknown)}; choose from {', '.join(FAULT_KINDS)}")
    return kinds
