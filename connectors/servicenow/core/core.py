"""One handoff core: every part built once from the settings, and run.

The front doors (doors/) compose a core; a webhook door and a socket.io door
configured with the same ServiceNow options in one process share one
(``Core.for_door``), so a chat started through one continues through the
other and ServiceNow may push to either's ``/callback``.

Without ``redis_url`` the store lives in the process (a deployment of one
replica) and the core runs exactly as with Redis: records, outbox, leases,
timers and dedupe all go through the store. Where the store forgets at exit,
the tracker slots bring the live handoffs back at start-up (``resume``).
"""

import asyncio
import logging
import uuid
import weakref
from typing import Any, Dict, List, Mapping, Optional, Set

from connectors.servicenow.config import CONNECT_API, VIRTUAL_AGENT_API, ServiceNowSettings
from connectors.servicenow.core.callbacks import CallbackIntake
from connectors.servicenow.core.chat import ChatRegistry, OpensInFlight
from connectors.servicenow.core.chats import Chats
from connectors.servicenow.core.ending import Ending, HeldEnds, UnsavedEnds
from connectors.servicenow.core.handback import Handback
from connectors.servicenow.core.intake import DeliveryReports, Dispatcher
from connectors.servicenow.core.notices import Notices
from connectors.servicenow.core.opening import Opening
from connectors.servicenow.core.ordering import PushOrder
from connectors.servicenow.core.polling import Polling
from connectors.servicenow.core.reconcile import Reconciler
from connectors.servicenow.core.reconciling import ReconcileLoop
from connectors.servicenow.core.records import Records
from connectors.servicenow.core.router import Router
from connectors.servicenow.core.timeouts import Timeouts
from connectors.servicenow.core.timers import TimerLoop, Timers, TimerSchedule
from connectors.servicenow.core.typing import TypingForwarder
from connectors.servicenow.errors import ConfigurationError, StoreUnavailable
from connectors.servicenow.ops.metrics import HandoffMetrics, MetricsPort
from connectors.servicenow.ops.observe import Observer
from connectors.servicenow.outbox.base import Outgoing
from connectors.servicenow.outbox.stream import Outbox
from connectors.servicenow.outbox.capacity import SOCKETIO, SSE
from connectors.servicenow.rasa_glue.channels import Agent
from connectors.servicenow.rasa_glue.handback import HandBackTurn
from connectors.servicenow.rasa_glue.lock_store import release_before_exit
from connectors.servicenow.rasa_glue.nlg import Speech
from connectors.servicenow.rasa_glue.output import OutOfBandOutput
from connectors.servicenow.rasa_glue.pending import PendingWrites
from connectors.servicenow.rasa_glue.slots import TrackerSlots
from connectors.servicenow.rasa_glue.tuning import cache_event_class_lookup, freeze_startup_heap
from connectors.servicenow.retry import STORE_RECOVERY
from connectors.servicenow.servicenow.base import Backend
from connectors.servicenow.servicenow.connect import ConnectBackend
from connectors.servicenow.servicenow.http import ServiceNowHTTP
from connectors.servicenow.servicenow.va_records import ConversationRecords
from connectors.servicenow.servicenow.virtual_agent import VirtualAgentBackend
from connectors.servicenow.store import Store, open_store
from connectors.servicenow.store.keys import recipient_of_callback_lease
from connectors.servicenow.tasks import TaskSet

logger = logging.getLogger(__name__)

Messages = List[Dict[str, Any]]

HOUSEKEEPING_INTERVAL_S = 300.0
SHUTDOWN_TIMEOUT_S = 10.0
#: Pauses between attempts to resume live chats while the tracker store fails at startup.
RESUME_PAUSES = STORE_RECOVERY


def build_backend(settings: ServiceNowSettings, http: ServiceNowHTTP) -> Backend:
    if settings.api == CONNECT_API:
        return ConnectBackend(settings, http)
    if settings.api == VIRTUAL_AGENT_API:
        return VirtualAgentBackend(settings, http)
    raise ConfigurationError(f"No backend for 'api: {settings.api}'.")


class Core:
    #: The cores of this process, for doors that share one (``for_door``).
    _made: "List[weakref.ReferenceType[Core]]" = []

    def __init__(self, settings: ServiceNowSettings, store: Optional[Store] = None) -> None:
        """``store``: where handoff state lives; by default the one
        ``redis_url`` names, or one in this process without it."""
        self.settings = settings
        self._app: Optional[Any] = None
        #: The names of the doors that compose this core.
        self.doors: Set[str] = set()
        #: This replica, as the holder of leases.
        self.replica_id = uuid.uuid4().hex[:12]
        self.metrics = HandoffMetrics() if settings.metrics or settings.metrics_port else None
        self.observe = Observer(self.metrics)
        self.work = TaskSet()
        self._build_edges(settings, store)
        self._build_handoffs(settings)
        self._build_routing(settings)
        self._tasks = TaskSet()
        self._metrics_port = (
            MetricsPort(self.metrics, settings.metrics_host, settings.metrics_port)
            if self.metrics is not None and settings.metrics_port
            else None
        )
        if self.metrics is not None:
            self.metrics.read_live_chats(lambda: len(self.registry))
            self.metrics.read_outbox_backlog(lambda: self.outbox.callback_backlog)
            capacity = self.outbox.capacity
            self.metrics.read_open_streams(
                lambda kind: capacity.open_by_kind[kind], (SSE, SOCKETIO), lambda: self.outbox.readers
            )
        self._started = False
        self._stopped = False
        #: Set when the server starts to stop: requests are refused from then
        #: on (``ShuttingDown``), so that none starts on clients about to close.
        self.stopping = False
        self._closed = False

    def _build_edges(self, settings: ServiceNowSettings, store: Optional[Store]) -> None:
        """ServiceNow, the stores and the outbox. Without metrics none of the
        recording runs: the HTTP client and the outbox do no extra work."""
        counting = self.metrics is not None
        self.http = ServiceNowHTTP(
            settings,
            on_attempt=self.observe.servicenow_attempt if counting else None,
            on_retry=self.observe.servicenow_retry if counting else None,
        )
        self.backend = build_backend(settings, self.http)
        #: The tracker slots: Rasa's view of each handoff, and the store's durable mirror.
        self.slots = TrackerSlots(self.agent, self.backend.api)
        self.store: Store = (
            store if store is not None else open_store(settings.redis_url, prefix=settings.redis_prefix, mirror=self.slots)
        )
        self.reports = DeliveryReports(settings, self.store, self.backend, self.work)
        self.outbox = Outbox(
            self.store,
            settings.callback_url,
            owner=self.replica_id,
            request_timeout=settings.request_timeout,
            max_streams_per_sender=settings.max_streams_per_sender,
            max_streams_per_client=settings.max_streams_per_client,
            max_open_streams=settings.max_open_streams,
            on_taken=self.reports.taken,
            on_delivered=self.observe.reached_sink if counting else None,
            callback_secret=settings.callback_secret,
        )
        self.pending = PendingWrites(self.slots)
        #: Every text the user hears goes through here (domain response, ``messages``, default).
        self.speech = Speech(settings.texts, self.agent)
        self.notices = Notices(self.speech, self.slots, self.outbox, self.backend.api)

    def _build_handoffs(self, settings: ServiceNowSettings) -> None:
        """The state of the handoffs and every way one ends."""
        self.registry = ChatRegistry()
        self.in_flight = OpensInFlight()
        #: Virtual Agent chats read back from ServiceNow's record (reconcile.py), or None.
        self.reconciler = (
            Reconciler(ConversationRecords(self.http))
            if settings.reconcile and settings.api == VIRTUAL_AGENT_API
            else None
        )
        watched = self.backend.pulls or self.reconciler is not None
        self.records = Records(
            self.store, self.backend.api, pulls=watched, owner=self.replica_id,
            poll_interval=settings.poll_interval if self.backend.pulls else settings.reconcile_interval,
        )
        self.schedule = TimerSchedule(self.store)
        self.timers = Timers(settings, self.schedule, self.records, pulls=self.backend.pulls)
        self.handback = Handback(
            HandBackTurn(self.agent, settings.handback_intent), self.out_of_band_output, self._start_asked, self.work
        )
        self.unsaved = UnsavedEnds(self.slots, self.handback)
        self.held = HeldEnds()
        self.ending = Ending(
            self.backend, self.store, self.registry, self.records, self.slots, self.pending, self.unsaved, self.held,
            self.notices, self.timers, self.handback, self.observe,
        )

    def _build_routing(self, settings: ServiceNowSettings) -> None:
        """What ServiceNow says, and where a user's message goes."""
        reconciler = self.reconciler
        self.dispatcher = Dispatcher(
            settings, self.backend, self.store, self.outbox, self.pending, self.observe, self.work,
            on_closed=self.ending.closed_by_servicenow, on_progress=self.timers.progressed,
            on_gone=self.ending.ended_elsewhere,
            order=PushOrder(reconciler.records, settings.order_wait) if reconciler is not None else None,
            keyed=reconciler is not None,
        )
        reconciling = (
            ReconcileLoop(
                reconciler, self.store, self.dispatcher, self.work,
                owner=self.replica_id, interval=settings.reconcile_interval, on_cursor=self.records.save,
            )
            if reconciler is not None
            else None
        )
        self.polling = Polling(
            settings, self.backend, self.store, self.dispatcher, self.work,
            owner=self.replica_id, on_failed=self.ending.failed_in_background, on_cursor=self.records.save,
            reconciling=reconciling,
        )
        self.chats = Chats(
            self.store, self.registry, self.in_flight, self.records, self.unsaved, self.held, self.pending, self.polling,
            self.timers,
        )
        self.callbacks = CallbackIntake(self.chats, self.in_flight, self.dispatcher, self.observe, self.polling)
        self.opening = Opening(
            settings, self.backend, self.chats, self.in_flight, self.records, self.slots, self.notices,
            self.timers, self.handback, self.observe,
        )
        self.timer_loop = TimerLoop(
            self.schedule,
            Timeouts(settings, self.backend, self.store, self.chats, self.ending, self.notices, self.timers).fire,
        )
        self.typing = TypingForwarder(self.backend.send_typing)
        self.router = Router(
            settings, self.backend, self.chats, self.in_flight, self.opening, self.ending, self.speech,
            self.pending, self.polling, self.timers, self.typing,
        )

    # -- sharing between doors -------------------------------------------------

    @classmethod
    def for_door(cls, settings: ServiceNowSettings, door: str) -> "Core":
        """The core of this process with equal settings that no door named
        ``door`` composes yet, or a new one: a webhook door and a socket.io
        door with the same ServiceNow options share one, two doors of one
        kind never do."""
        for ref in list(cls._made):
            core = ref()
            if core is None:
                cls._made.remove(ref)
            elif door not in core.doors and core.settings == settings:
                logger.info("The %s door shares the handoff state of the %s door.", door, ", ".join(sorted(core.doors)))
                core.doors.add(door)
                return core
        core = cls(settings)
        core.doors.add(door)
        cls._made.append(weakref.ref(core))
        return core

    # -- Rasa ------------------------------------------------------------------

    def bind(self, app: Any) -> None:
        """Remember the app whose ``ctx.agent`` serves this core."""
        self._app = app

    def agent(self) -> Optional[Agent]:
        return getattr(self._app.ctx, "agent", None) if self._app is not None else None

    def out_of_band_output(self) -> OutOfBandOutput:
        """Where Rasa sends what it says outside a request: the outbox; a
        handoff it asks for (or its end) is acted on in a task of its own."""
        return OutOfBandOutput(self._deliver, self._handoff_asked, self._end_asked)

    async def _deliver(self, recipient_id: str, message: Dict[str, Any]) -> None:
        await self.outbox.put(recipient_id, [Outgoing(message)])

    def _handoff_asked(self, recipient_id: str, options: Dict[str, Any]) -> None:
        self.work.spawn(self.router.start_out_of_band(recipient_id, options))

    def _end_asked(self, recipient_id: str) -> None:
        self.work.spawn(self.router.end_by_bot(recipient_id))

    async def _start_asked(self, sender_id: str, options: Mapping[str, Any]) -> Messages:
        return await self.router.start_out_of_band(sender_id, options, in_request=True)

    # -- life cycle --------------------------------------------------------------

    async def start(self, app: Any) -> None:
        """Once the server runs (the first door to ask starts it)."""
        self.bind(app)
        if self._started:
            return
        self._started = True
        missing = self.slots.missing_slots()
        if missing:
            logger.error(
                "domain.yml does not declare the slot(s) %s; the ServiceNow handoff cannot keep its state. "
                "See the README for the slot definitions.",
                ", ".join(missing),
            )
        if self.settings.cache_event_classes:
            cache_event_class_lookup()
        if self.settings.freeze_gc_at_start:
            freeze_startup_heap()
        await self._check_store()
        if self._metrics_port is not None:
            self._metrics_port.start()
        self._tasks.spawn(self._take_over(), name="servicenow-takeover")
        self._tasks.spawn(self.resume(), name="servicenow-resume")
        if self.timers.enabled:
            self.timer_loop.start()
        self._tasks.spawn(self._housekeeping(), name="servicenow-housekeeping")
        self._tasks.spawn(self.outbox.capacity.renew_forever(), name="servicenow-stream-slots")

    async def stop(self) -> None:
        """When the server starts to stop (the first door to ask stops it):
        new requests are refused, turns and pushes under way finish,
        acknowledged callbacks are delivered, state is saved. Rasa's agent
        and event broker are still there (Rasa closes them when the server
        has stopped)."""
        if self._stopped:
            return
        self._stopped = True
        self.stopping = True
        self._tasks.cancel()
        await self.shutdown(SHUTDOWN_TIMEOUT_S)

    async def close(self) -> None:
        """Once the server has stopped serving (after Sanic's wait for the
        requests still running): the clients close, none of them in use."""
        if self._closed:
            return
        self._closed = True
        self.stopping = True
        # After Sanic's wait: no stream or socket of this replica is left to hold its slot.
        await self.outbox.capacity.release_all(SHUTDOWN_TIMEOUT_S)
        # After the last turn: a lock Redis did not let go of would hold the
        # conversation's next turn, on another replica, until it expires.
        await release_before_exit(self.agent(), SHUTDOWN_TIMEOUT_S)
        await self.http.aclose()
        await self.outbox.aclose()
        if self._metrics_port is not None:
            self._metrics_port.stop()
        await self.store.aclose()

    async def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Stop the handoffs' background work, saving what is unsaved."""
        await self.work.wait(timeout)
        await self.timer_loop.stop(timeout)
        await self.typing.aclose()
        pollers = await self.polling.stop_polling(timeout)
        await self.work.wait(timeout)
        await self.pending.stop()
        await self.polling.release(pollers, timeout)
        await self.records.stop()
        await self.held.stop(timeout)
        await self.unsaved.stop()
        await self.outbox.drain(timeout)

    async def resume(self) -> None:
        """Take up the live handoffs of before the start (``Chats.resume``),
        trying again while the tracker store fails."""
        agent = self.agent()
        if agent is None or not agent.is_ready():
            logger.warning("No model is loaded; live chats from before the restart are resumed on their next message.")
            return
        attempt = 0
        while True:
            try:
                await self.chats.resume()
                return
            except StoreUnavailable as error:
                # Meanwhile each conversation's first message or callback
                # reads its own tracker (503 while the store fails).
                delay = RESUME_PAUSES.after(attempt)
                logger.error("Could not resume live chats from the tracker store (retrying in %.0f s): %s", delay, error)
                attempt += 1
                await asyncio.sleep(delay)

    async def _check_store(self) -> None:
        try:
            await self.store.ping()
            logger.info("Handoff state is %s.", self.store.describe())
        except StoreUnavailable as error:
            # Not fatal: Redis may come up after this replica. Until it does,
            # messages and callbacks are answered with 503, never guessed.
            logger.error("Redis (redis_url) does not answer; answering 503 until it does: %s", error)

    async def _take_over(self) -> None:
        """Take over the work of replicas that stopped or died: polling their
        Connect chats, posting their conversations' callbacks."""
        while True:
            await asyncio.sleep(self.settings.poll_interval)
            try:
                if self.polling.watches:
                    await self.chats.take_over_free_chats()
                if self.settings.callback_url:
                    for name in await self.store.free_leases():
                        recipient = recipient_of_callback_lease(name)
                        if recipient is not None:
                            self.outbox.take_over(recipient)
            except StoreUnavailable as error:
                logger.warning("Could not look for Connect chats to take over: %s", error)
            except Exception:
                logger.exception("Looking for Connect chats to take over failed; trying again.")

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
            self.typing.prune()
            try:
                await self.chats.forget_ended_elsewhere()
            except StoreUnavailable as error:
                logger.warning("Could not check this replica's chats against the store: %s", error)
