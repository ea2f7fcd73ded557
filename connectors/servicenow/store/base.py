"""The store interface: where the connector keeps what must outlive a request,
a replica or a restart.

Five kinds of state, each with the guarantee the core builds on:

* **Handoff records**, by sender id and by chat id: which conversations talk
  to a human, and the chat's cursor. Created once (a second replica starting
  the same handoff loses), updated only while the same chat is live, ended once.
* **Dedupe marks**: ``claim_once`` is true for exactly one caller per key and
  time-to-live, across every replica (a ServiceNow message id, a callback).
* **Outbox streams**, one per conversation: ordered entries whose id is the
  sequence and the SSE event id, ``<ms>-<n>`` like a Redis stream id, so ids
  keep growing across replicas and restarts. Readers can block until an entry
  arrives. Each sink (the callback, SSE streams) keeps its own delivered-up-to
  pointer, which only moves forward and reports whether this caller moved it.
  What an agent says is appended under a ``Guard``, checked in the same step:
  only while its chat is live, only by the replica that polls it, each
  message once.
* **Leases**: one holder per name at a time, with expiry, so one replica polls
  a chat; registered names whose lease is free can be listed, so a live
  replica takes over the chats of a dead one.
* **Timers**: due times kept in the store; a due timer is claimed by one
  replica, and comes back if that replica dies before finishing it.

``memory.MemoryStore`` keeps all of it in the process (no ``redis_url``: a
deployment of one replica); ``redis.RedisStore`` keeps it in Redis for a
deployment of many replicas. The core runs the same code on both, and both
pass the same contract tests (``tests/store/test_contract.py``). What differs
is what outlives the process, and that is the store's business alone:

* ``find_handoff`` and ``import_handoffs`` read the tracker slots (the
  durable mirror, ``HandoffMirror``) where the store itself forgets at exit
  (the memory store); Redis remembers, and never reads them.
* ``timer_rescan_s``: how long a timer loop may sleep without looking, since
  only a shared store can get timers from another process.

Every name a caller gives (leases, dedupe keys, timers, streams, sinks) is
spelled in ``keys.py``.
"""

import abc
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

from connectors.servicenow import errors

#: ``json.dumps`` with options makes an encoder per call; every entry and record is one.
_COMPACT = json.JSONEncoder(separators=(",", ":"))

# -- errors -----------------------------------------------------------------


class StoreError(Exception):
    """The store could not do what was asked."""


class AppendRefused(Exception):
    """A guarded append (``Guard``) found its condition false: nothing was
    appended and nothing claimed. Not a failure of the store."""


class ChatNotLive(AppendRefused):
    """The guard's chat is no longer the sender's live handoff: it ended (on
    any replica), so what its agent said is not shown after the end."""


class LeaseLost(AppendRefused):
    """The guard's lease is not the owner's any more: another replica polls
    the chat now, and delivers what this poll found."""


class AlreadyStored(AppendRefused):
    """Some entries' ``once_key`` was stored before (a poller that took over
    from a stale cursor): drop those and append the others again."""

    def __init__(self, keys: Sequence[str]) -> None:
        super().__init__(f"{len(keys)} entry(ies) stored before")
        self.keys = frozenset(keys)


class StoreUnavailable(StoreError, errors.StoreUnavailable):
    """The store cannot be reached (down, restarting, loading, timed out).

    Nothing was decided: the caller must not guess (a webhook answers 503,
    never NLU) and may retry later. Also an ``errors.StoreUnavailable``, the
    channel's "state unknown" failure, so the tracker store's failures and
    this one are handled by the same clause."""


# -- records ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandoffRecord:
    """One conversation in handoff: the routing truth.

    The tracker slots stay the Rasa-visible, durable mirror of the first five fields."""

    sender_id: str
    chat_id: str
    #: ``connect`` or ``virtual_agent``: which API the chat runs on.
    api: str
    #: The ServiceNow account the chat runs as.
    user: Optional[str] = None
    #: ServiceNow's time (epoch ms) of the newest message seen in the chat.
    last_updated: Optional[float] = None
    #: Ids of the newest messages already handled (Connect's cursor).
    seen_ids: Tuple[str, ...] = ()
    #: A live agent has accepted the chat.
    agent_joined: bool = False
    #: When the handoff started (epoch seconds).
    started_at: Optional[float] = None
    #: ServiceNow's latest wait estimate while the chat is queued.
    wait_estimate: Optional[str] = None
    #: Virtual Agent: the chat's conversation record and the last message
    #: ``sequence`` read back from it (reconciliation's cursor).
    conversation: Optional[str] = None
    sequence: int = 0

    def to_json(self) -> str:
        """The record without the ids it is filed under, in short keys: there
        is one per live chat, and 100,000 live chats must fit in little memory."""
        data: Dict[str, Any] = {"a": self.api}
        if self.user is not None:
            data["u"] = self.user
        if self.last_updated is not None:
            data["t"] = self.last_updated
        if self.seen_ids:
            data["s"] = list(self.seen_ids)
        if self.agent_joined:
            data["j"] = 1
        if self.started_at is not None:
            data["b"] = self.started_at
        if self.wait_estimate is not None:
            data["w"] = self.wait_estimate
        if self.conversation is not None:
            data["v"] = self.conversation
        if self.sequence:
            data["q"] = self.sequence
        return _COMPACT.encode(data)

    @classmethod
    def from_json(cls, sender_id: str, chat_id: str, text: str) -> "HandoffRecord":
        data = json.loads(text)
        return cls(
            sender_id=sender_id,
            chat_id=chat_id,
            api=data["a"],
            user=data.get("u"),
            last_updated=data.get("t"),
            seen_ids=tuple(data.get("s", ())),
            agent_joined=bool(data.get("j")),
            started_at=data.get("b"),
            wait_estimate=data.get("w"),
            conversation=data.get("v"),
            sequence=int(data.get("q", 0)),
        )


@dataclass(frozen=True)
class NewEntry:
    """What the caller hands to ``append``: the store gives it its id."""

    payload: Mapping[str, Any]
    #: SSE event name: ``message``, ``typing`` or ``handoff``.
    kind: str = "message"
    #: Whether the callback sink receives it as well as streams.
    to_callback: bool = True
    #: Only with a ``Guard``: the entry is stored once per deployment within
    #: the guard's ``once_ttl`` (a ServiceNow message id).
    once_key: Optional[str] = None


@dataclass(frozen=True)
class Guard:
    """What an append of an agent's words checks in its own atomic step, so
    that no replica shows them after the chat's end, none delivers a poll it
    no longer holds the chat for, and none stores a message twice (or claims
    one it does not store):

    * the sender's handoff record is still chat ``chat_id`` (else ``ChatNotLive``);
    * with ``lease``, ``owner`` holds it (else ``LeaseLost``);
    * no entry's ``once_key`` was stored within ``once_ttl`` seconds (else
      ``AlreadyStored``, naming them); the entries' keys are claimed with the
      append.

    Each refusal leaves everything as it was."""

    sender_id: str
    chat_id: str
    lease: Optional[str] = None
    owner: Optional[str] = None
    once_ttl: float = 0.0


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One stored outbox entry. ``entry_id`` is its place in the stream and
    its SSE event id."""

    entry_id: str
    kind: str
    payload: Mapping[str, Any] = field(compare=False)
    to_callback: bool = True


@dataclass(frozen=True)
class TimerClaim:
    """A due timer this caller now holds. Call ``finish_timer`` once it has
    fired; if the holder dies first, the timer is due again at ``held_until``."""

    name: str
    #: Epoch milliseconds; also the proof of holding it.
    held_until: int


# -- entry ids --------------------------------------------------------------

_ENTRY_ID = re.compile(r"^(\d{1,19})-(\d{1,19})$")


def parse_entry_id(entry_id: Optional[str]) -> Optional[Tuple[int, int]]:
    """``(ms, n)`` of a stream entry id, or None when it is not one (e.g. an
    SSE id from the in-process outbox before the store, or garbage)."""
    if not entry_id:
        return None
    match = _ENTRY_ID.match(entry_id)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


def is_entry_id(entry_id: Optional[str]) -> bool:
    return parse_entry_id(entry_id) is not None


def entry_id_after(a: str, b: Optional[str]) -> bool:
    """True when entry ``a`` comes after ``b`` (anything comes after None)."""
    parsed_b = parse_entry_id(b)
    parsed_a = parse_entry_id(a)
    if parsed_a is None:
        raise ValueError(f"not a stream entry id: {a!r}")
    return parsed_b is None or parsed_a > parsed_b


#: What ``take_job`` found: the sink's pointer and the entries after it.
Taken = Tuple[Optional[str], List[OutboxEntry]]


@dataclass(frozen=True)
class Cap:
    """A deployment-wide count of holders (``take_slot``), full at ``limit``
    (0: counted, never full)."""

    name: str
    limit: int = 0


@dataclass(frozen=True)
class StartLimits:
    """What ``admit_handoff`` checks before a handoff may start. 0 turns a
    check off."""

    #: Live handoffs (records, and starts admitted and not filed yet) at once.
    max_live: int = 0
    #: Starts of one conversation in any ``window_s`` seconds.
    per_sender: int = 0
    window_s: float = 60.0
    #: Starts of the whole deployment: one every ``interval_s`` seconds on
    #: average, ``burst`` at once (the generic cell rate algorithm).
    interval_s: float = 0.0
    burst: int = 1
    #: How long an admitted start keeps its place before its record is filed
    #: (a replica that dies while opening a chat holds it no longer).
    hold_s: float = 120.0


#: Why ``admit_handoff`` refused: live handoffs at ``max_live``; the
#: conversation's own starts at ``per_sender``; the deployment's rate.
REFUSED_BUSY, REFUSED_SENDER_RATE, REFUSED_DEPLOYMENT_RATE = "busy", "sender_rate", "deployment_rate"


class HandoffMirror(Protocol):
    """Where live handoffs are also kept, durably: the tracker slots. A store
    that forgets at exit reads its handoffs back from here."""

    async def load_handoff(self, sender_id: str) -> Optional[HandoffRecord]:
        """The sender's handoff as the mirror has it; ``StoreUnavailable`` when it cannot say."""

    def live_handoffs(self) -> AsyncIterator[HandoffRecord]:
        """Every handoff the mirror holds as live; ``StoreUnavailable`` when it cannot list them."""


# -- the interface ----------------------------------------------------------


class Store(abc.ABC):
    """State and delivery shared by every part of the connector (and, for
    ``RedisStore``, by every replica). Every method may raise
    ``StoreUnavailable``; none returns a guess when the store is down.

    Names (``sender_id``, ``stream``, lease and timer names, dedupe keys) are
    caller-chosen strings; the store keeps namespaces apart by method.
    """

    #: The longest a timer loop may sleep without looking at the store: a
    #: timer another process set (or one whose claimer died) is found at most
    #: this late. Infinite where no other process sets timers.
    timer_rescan_s: float = math.inf

    def describe(self) -> str:
        """Where the state lives, for the start-up log line."""
        return "in this process"

    # -- handoff records ----------------------------------------------------

    @abc.abstractmethod
    async def create_handoff(self, record: HandoffRecord) -> bool:
        """File a new handoff by sender and by chat id. False (and nothing
        changed) when the sender already has another chat: someone else
        started it. True again for the very same chat id (nothing changed)."""

    @abc.abstractmethod
    async def get_handoff(self, sender_id: str) -> Optional[HandoffRecord]:
        """The sender's live handoff, or None when messages go to the bot."""

    @abc.abstractmethod
    async def handoff_by_chat(self, chat_id: str) -> Optional[HandoffRecord]:
        """The live handoff running in ServiceNow chat ``chat_id``."""

    @abc.abstractmethod
    async def update_handoff(self, record: HandoffRecord) -> bool:
        """Replace the record (cursor, agent joined). False, and nothing
        written, when the sender's live chat is no longer ``record.chat_id``
        (it ended), so a late writer cannot bring an ended chat back."""

    @abc.abstractmethod
    async def end_handoff(self, sender_id: str, chat_id: str) -> Optional[HandoffRecord]:
        """Remove the handoff if it is still chat ``chat_id``, and return its
        last state. None when it had already ended: ending runs once."""

    async def find_handoff(self, sender_id: str) -> Optional[HandoffRecord]:
        """The sender's live handoff wherever the deployment keeps it: the
        store, or the mirror where the store may have forgotten it (a restart
        of a store that lives in the process). The route of a user's message
        asks this; ``get_handoff`` is for those that must not read the
        mirror (typing, delivery reports)."""
        return await self.get_handoff(sender_id)

    async def import_handoffs(self) -> List[HandoffRecord]:
        """At start-up: bring back the live handoffs a store that forgets at
        exit lost, from the mirror, and return them (their timers and pollers
        start again). Nothing to do where the store itself remembers."""
        return []

    @abc.abstractmethod
    def handoffs(self) -> AsyncIterator[HandoffRecord]:
        """Every live handoff, in no particular order (an admin view and the
        import from tracker slots; not for the per-message path)."""

    # -- exactly once -------------------------------------------------------

    @abc.abstractmethod
    async def claim_once(self, key: str, ttl: float) -> bool:
        """True for the first caller with ``key`` within ``ttl`` seconds,
        False for every later one, on any replica."""

    # -- outbox streams -----------------------------------------------------

    @abc.abstractmethod
    async def append(
        self,
        stream: str,
        entries: Sequence[NewEntry],
        *,
        dedupe_key: Optional[str] = None,
        dedupe_ttl: float = 0.0,
        guard: Optional[Guard] = None,
    ) -> Optional[List[OutboxEntry]]:
        """Append entries in order, in one atomic step, and wake blocked
        readers. With ``dedupe_key``, the append happens only if the key was
        not claimed within ``dedupe_ttl`` seconds (claim and append together:
        a callback is stored exactly once); None when it was a repeat. With
        ``guard``, only if its conditions hold in the same step (else an
        ``AppendRefused``, nothing changed); a repeat is recognised first.

        The stream keeps at least its latest ``retained`` entries and expires
        ``stream_ttl`` seconds after its last append or sink move."""

    @abc.abstractmethod
    async def read(
        self, stream: str, after: Optional[str] = None, *, block: Optional[float] = None, limit: int = 100
    ) -> List[OutboxEntry]:
        """Entries after ``after`` (an entry id; None: from the oldest kept),
        oldest first, at most ``limit``. When there are none and ``block`` is
        given, wait up to ``block`` seconds for one; [] when none came."""

    @abc.abstractmethod
    async def sink_position(self, stream: str, sink: str) -> Optional[str]:
        """The id of the last entry ``sink`` took, or None when it took none."""

    @abc.abstractmethod
    async def advance_sink(self, stream: str, sink: str, entry_id: str) -> bool:
        """Move ``sink``'s pointer forward to ``entry_id``. True when this call
        moved it; False when it already was there or past it. Two replicas
        racing to take the same entry: exactly one gets True."""

    # -- leases -------------------------------------------------------------

    @abc.abstractmethod
    async def register_lease(self, name: str) -> None:
        """Make ``name`` a job that needs a holder (e.g. a Connect chat to
        poll). It is listed by ``free_leases`` while nobody holds it."""

    @abc.abstractmethod
    async def unregister_lease(self, name: str) -> None:
        """The job is over: forget the name and any lease on it."""

    @abc.abstractmethod
    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        """Hold ``name`` for ``ttl`` seconds. True when it was free, expired
        or already ``owner``'s (then it is renewed); False when held by another.

        Once made, an acquire or renew call takes effect even if its caller
        is cancelled (a poller stopping), and a ``release_lease`` of the same
        name made after it takes effect after it: a stopping replica's leases
        are free when its release returns, not re-taken by a late renewal."""

    @abc.abstractmethod
    async def renew_lease(self, name: str, owner: str, ttl: float) -> bool:
        """Extend ``owner``'s lease by ``ttl`` from now. False when ``owner``
        no longer holds it (it expired, or another replica took it): stop."""

    @abc.abstractmethod
    async def release_lease(self, name: str, owner: str) -> bool:
        """Give up ``owner``'s lease so another replica can take the job at
        once (graceful shutdown). False when ``owner`` did not hold it."""

    @abc.abstractmethod
    async def lease_owner(self, name: str) -> Optional[str]:
        """Who holds ``name`` now, if anyone."""

    @abc.abstractmethod
    async def free_leases(self, limit: int = 100) -> List[str]:
        """Registered names that nobody holds now (never held, released or
        expired), up to ``limit``. A hint: ``acquire_lease`` decides."""

    # A job's steps: each is one atomic step of the store (one script in
    # Redis, one synchronous call in the process), so nothing another
    # replica does falls between their parts.

    @abc.abstractmethod
    async def take_job(
        self, lease: str, owner: str, ttl: float, stream: str, sink: str, limit: int = 100
    ) -> Optional[Taken]:
        """Take the job ``lease`` that drains ``sink`` of ``stream``: acquire
        the lease for ``owner`` (as ``acquire_lease``), register it (as
        ``register_lease``) and return the sink's pointer and up to ``limit``
        entries after it. None when another holder has the lease (it is
        registered all the same, so the job is taken over if that holder
        dies)."""

    @abc.abstractmethod
    async def append_and_take(
        self,
        stream: str,
        entries: Sequence[NewEntry],
        *,
        dedupe_key: Optional[str] = None,
        dedupe_ttl: float = 0.0,
        guard: Optional[Guard] = None,
        lease: str,
        owner: str,
        ttl: float,
        sink: str,
        limit: int = 100,
    ) -> Optional[Tuple[List[OutboxEntry], Optional[Taken]]]:
        """``append``, then ``take_job`` of ``stream``'s sink ``sink``. None
        when the append was a repeat (nothing appended, nothing taken); else
        the stored entries and what ``take_job`` returned (None: another
        holder has the lease). A ``guard`` that refuses raises as
        ``append``'s does, nothing taken."""

    @abc.abstractmethod
    async def advance_and_next(
        self,
        stream: str,
        sink: str,
        entry_id: str,
        lease: str,
        owner: str,
        ttl: float,
        limit: int = 100,
        *,
        let_go: bool = False,
    ) -> Tuple[bool, Optional[List[OutboxEntry]]]:
        """What a job's holder does after taking an entry: move ``sink``'s
        pointer to ``entry_id`` (as ``advance_sink``); if this call moved it,
        renew ``owner``'s lease (as ``renew_lease``) and read up to ``limit``
        entries after ``entry_id`` (none read when ``limit`` is 0). Answers
        whether this call moved the pointer, and the entries read, or None
        when the pointer did not move or the lease is not ``owner``'s any
        more (then another holder goes on: stop).

        With ``let_go`` (and ``limit`` above 0), a holder that found nothing
        after ``entry_id`` gives the job back in the same step, as
        ``let_go`` does: ``(True, [])`` then means caught up and let go."""

    @abc.abstractmethod
    async def let_go(
        self, lease: str, owner: str, ttl: float, stream: str, sink: str, limit: int = 100
    ) -> Optional[Taken]:
        """A caught-up holder gives the job ``lease`` back, so that an entry
        appended meanwhile is never stranded: when ``stream`` holds entries
        after ``sink``'s pointer, the lease stays ``owner``'s (as
        ``take_job``, which answers the pointer and up to ``limit`` entries
        after it: keep going); else the lease is released and unregistered
        (None). None too, with nothing changed, when another holder has the
        lease: that holder goes on."""

    # -- timers -------------------------------------------------------------

    @abc.abstractmethod
    async def schedule_timer(self, name: str, due_at: float) -> None:
        """Set (or move) timer ``name`` to fire at ``due_at`` (epoch seconds)."""

    @abc.abstractmethod
    async def cancel_timer(self, name: str) -> bool:
        """Drop the timer; False when there was none."""

    @abc.abstractmethod
    async def timer_due_at(self, name: str) -> Optional[float]:
        """When the timer is due (epoch seconds), or None when there is none."""

    @abc.abstractmethod
    async def next_timer_due(self) -> Optional[float]:
        """When the earliest timer is due (epoch seconds; a claimed one at the
        end of its hold), or None when there is none: how long a timer loop
        may sleep."""

    @abc.abstractmethod
    async def claim_due_timers(self, *, hold: float = 30.0, limit: int = 100) -> List[TimerClaim]:
        """Claim timers that are due now, each for one caller across the
        deployment; a claimed timer is hidden for ``hold`` seconds."""

    @abc.abstractmethod
    async def finish_timer(self, claim: TimerClaim) -> bool:
        """The claimed timer fired: remove it, unless it was rescheduled
        meanwhile (then the new due time stays). False when it was not held."""

    # -- counted capacity ---------------------------------------------------

    @abc.abstractmethod
    async def take_slot(self, holder: str, caps: Sequence[Cap], ttl: float) -> Optional[Cap]:
        """Count ``holder`` in every cap, in one atomic step, unless one of
        them is full (a holder counted there already does not make it full):
        then nothing is counted and that cap is the answer. A slot lasts
        ``ttl`` seconds unless renewed, so a replica that dies leaves nothing
        counted for longer."""

    @abc.abstractmethod
    async def renew_slots(self, held: Mapping[str, Sequence[str]], ttl: float) -> None:
        """Extend (or count again, after an outage longer than ``ttl``) the
        slots held: holder -> the names of its caps."""

    @abc.abstractmethod
    async def release_slot(self, holder: str, names: Sequence[str]) -> None:
        """Stop counting ``holder`` in these caps."""

    @abc.abstractmethod
    async def count_slots(self, names: Sequence[str]) -> List[int]:
        """How many holders each cap counts now."""

    @abc.abstractmethod
    async def admit_handoff(self, sender_id: str, limits: StartLimits) -> Optional[str]:
        """Whether a handoff of ``sender_id`` may start, decided for the
        whole deployment in one atomic step: None, and its place among the
        live handoffs held for ``limits.hold_s`` (``create_handoff`` turns it
        into the record's), and the start counted in both rates; else the
        reason (``REFUSED_*``), with nothing counted."""

    @abc.abstractmethod
    async def release_admission(self, sender_id: str) -> None:
        """An admitted start that files no record (refused later, failed) gives its place back."""

    @abc.abstractmethod
    async def live_handoff_count(self) -> int:
        """Live handoffs, and admitted starts that hold a place."""

    # -- lifecycle ----------------------------------------------------------

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the store answers."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections. The store is not used after this."""


def check_let_go(let_go: bool, limit: int) -> None:
    """``advance_and_next`` lets go only of a job it saw caught up."""
    if let_go and limit <= 0:
        raise ValueError("advance_and_next lets go only when it reads what is after (limit > 0)")


def dump_payload(payload: Mapping[str, Any]) -> str:
    return _COMPACT.encode(payload)
