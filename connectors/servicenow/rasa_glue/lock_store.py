"""A Redis lock store for Rasa that is safe across replicas.

Rasa serialises the turns of a conversation with a ticket lock kept in its
lock store. ``RedisLockStore`` (Rasa 3.6, and Rasa Pro 3.21 alike) keeps one
JSON value per conversation and changes it by reading it, changing it in the
process and writing it back: ``issue_ticket`` is GET then SET, ``cleanup`` is
GET, SET, GET, DEL. Two replicas doing that at once overwrite each other:

* a replica issuing a ticket while another cleans up writes the finished
  ticket back, and its own turn waits for that ticket to expire (60 s by
  default, ``TICKET_LOCK_LIFETIME``), then fails with ``LockError``;
* a replica cleaning up while another issues deletes the new ticket with the
  lock, and that turn fails at once (``Could not acquire lock``).

``python -m soak.lock_race`` shows the first with Rasa's own classes; the soak
saw both (docs/reliability.md, finding 6). ``AtomicRedisLockStore`` is a
``RedisLockStore`` whose changes to the value are Lua scripts, each one
atomic step in Redis. The key and the value keep Rasa's format, so replicas
on either class read each other's locks (a rolling upgrade), and the waiting
(``lock``, ``_acquire_lock``) stays Rasa's. A ticket Redis did not let go
of as its turn ended is removed again in the background (``cleanup``), where
Rasa's class fails the turn and leaves the ticket to hold the next one.

Rasa Pro's ``concurrent_redis`` lock store takes tickets from an INCR
counter, but its clean-up still reads (``KEYS``) and then deletes every key
of the conversation: a ticket issued in between is deleted with them.

In ``endpoints.yml``::

    lock_store:
      type: connectors.servicenow.rasa_glue.lock_store.AtomicRedisLockStore
      url: redis.internal      # the options of Rasa's redis lock store
      port: 6379
      db: 1
"""

import asyncio
import logging
import time
from typing import Any, Dict, Optional, Tuple

from rasa.core.lock_store import LOCK_LIFETIME, LockError, RedisLockStore
from rasa.utils.endpoints import EndpointConfig
from redis.exceptions import RedisError

from connectors.servicenow.rasa_glue.versions import init_redis_lock_store
from connectors.servicenow.retry import BRIEF_RECOVERY
from connectors.servicenow.tasks import TaskSet, bounded

logger = logging.getLogger(__name__)

# Rasa's value: {"conversation_id": ..., "tickets": ["{\"number\": n, \"expires\": t}", ...]},
# each ticket a JSON string of its own. ARGV[1] is the caller's clock (Rasa
# expires tickets by the replica's time.time()).
_TICKETS_FUNCTION = """
local function live_tickets(value, now)
  local lock = cjson.decode(value)
  local live = {}
  for _, text in ipairs(lock['tickets'] or {}) do
    local ticket = cjson.decode(text)
    if tonumber(ticket['expires']) >= now then live[#live + 1] = ticket end
  end
  return live
end
local function store(key, conversation_id, tickets)
  if #tickets == 0 then
    redis.call('DEL', key)
    return
  end
  local texts = {}
  for i, ticket in ipairs(tickets) do
    texts[i] = cjson.encode({number = ticket['number'], expires = ticket['expires']})
  end
  redis.call('SET', key, cjson.encode({conversation_id = conversation_id, tickets = texts}))
end
"""

# KEYS: the lock; ARGV: now, conversation id, lifetime. The new ticket's number.
_ISSUE = _TICKETS_FUNCTION + """
local value = redis.call('GET', KEYS[1])
local tickets = {}
if value then tickets = live_tickets(value, tonumber(ARGV[1])) end
local number = 0
if #tickets > 0 then number = tonumber(tickets[#tickets]['number']) + 1 end
tickets[#tickets + 1] = {number = number, expires = tonumber(ARGV[1]) + tonumber(ARGV[3])}
store(KEYS[1], ARGV[2], tickets)
return number
"""

# KEYS: the lock; ARGV: now, conversation id, the finished ticket's number
# ('' for none: only expired tickets go), and when that ticket expires ('':
# whatever its expiry). The lock goes when no ticket is left.
_REMOVE = _TICKETS_FUNCTION + """
local value = redis.call('GET', KEYS[1])
if not value then return 0 end
local kept = {}
for _, ticket in ipairs(live_tickets(value, tonumber(ARGV[1]))) do
  local finished = ARGV[3] ~= '' and tonumber(ticket['number']) == tonumber(ARGV[3])
  if finished and ARGV[4] ~= '' then
    finished = math.abs(tonumber(ticket['expires']) - tonumber(ARGV[4])) < 0.01
  end
  if not finished then kept[#kept + 1] = ticket end
end
store(KEYS[1], ARGV[2], kept)
return #kept
"""

#: A finished ticket that Redis did not let go of is removed again after
#: these pauses: left in place it holds the conversation's next turn until
#: it expires (``lock_lifetime``, 60 s by default), then that turn fails.
CLEAN_UP_AGAIN = BRIEF_RECOVERY


class AtomicRedisLockStore(RedisLockStore):
    """Rasa's ``RedisLockStore`` with every change to a lock one atomic step."""

    def __init__(self, endpoint_config: Optional[EndpointConfig] = None, **options: Any) -> None:
        """From ``endpoints.yml`` (Rasa passes ``endpoint_config``), or with
        the options of Rasa's ``RedisLockStore`` (``host``, ``port``, ...)."""
        if endpoint_config is not None:
            options = {"host": endpoint_config.url or "localhost", **endpoint_config.kwargs, **options}
        init_redis_lock_store(self, options)
        self._issue = self.red.register_script(_ISSUE)
        self._remove = self.red.register_script(_REMOVE)
        #: When each ticket this process issued and has not cleaned up expires.
        self._expiries: Dict[Tuple[str, int], float] = {}
        self._retries = TaskSet()
        #: The finished tickets Redis did not let go of yet, with their expiry.
        self._unreleased: Dict[Tuple[str, int], Optional[float]] = {}
        self.clean_up_again = CLEAN_UP_AGAIN

    def issue_ticket(self, conversation_id: str, lock_lifetime: float = LOCK_LIFETIME) -> int:
        now = time.time()
        try:
            number = int(self._issue(
                keys=[self.key_prefix + conversation_id], args=[now, conversation_id, lock_lifetime], client=self.red
            ))
        except Exception as error:  # as Rasa's: any failure to get a ticket is a LockError
            raise LockError(f"Error while acquiring lock. Error:\n{error}") from error
        self._expiries[(conversation_id, number)] = now + lock_lifetime
        return number

    def finish_serving(self, conversation_id: str, ticket_number: int) -> None:
        self._remove_tickets(conversation_id, ticket_number)

    def cleanup(self, conversation_id: str, ticket_number: int) -> None:
        """Remove the ticket, and the lock if no ticket is left, in one step.

        Rasa calls this as a turn ends, its work done. When Redis does not
        answer, the turn still ends well (Rasa's class raises here, failing a
        turn that has run) and the ticket is removed again in the background
        (``CLEAN_UP_AGAIN``), matched by its expiry too: should Redis have
        lost the lock meanwhile, a new ticket may carry the same number, and
        it is not this one. Outside an event loop there is no background: it
        raises, as Rasa's class does."""
        expires = self._expiries.pop((conversation_id, ticket_number), None)
        try:
            self._remove_tickets(conversation_id, ticket_number)
        except RedisError as error:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                raise error from None
            logger.warning(
                "Could not release the lock of conversation %s (%s: %s); trying again in the background.",
                conversation_id, type(error).__name__, error,
            )
            self._unreleased[(conversation_id, ticket_number)] = expires
            self._retries.spawn(self._clean_up_again(conversation_id, ticket_number, expires))

    def update_lock(self, conversation_id: str) -> None:
        """Drop expired tickets, in one step."""
        self._remove_tickets(conversation_id, None)

    def _remove_tickets(self, conversation_id: str, ticket_number: Optional[int], expires: Optional[float] = None) -> None:
        number = "" if ticket_number is None else ticket_number
        self._remove(
            keys=[self.key_prefix + conversation_id],
            args=[time.time(), conversation_id, number, "" if expires is None else expires],
            client=self.red,
        )

    async def stop(self, timeout: float) -> None:
        """A graceful shutdown: each release still waiting for Redis gets one
        last try now, within ``timeout`` in all, rather than being dropped
        with the process (its ticket would hold the conversation's next turn,
        on another replica, until it expires)."""
        self._retries.cancel()
        unreleased, self._unreleased = self._unreleased, {}
        if not unreleased:
            return

        async def release_all() -> None:
            for (conversation_id, ticket_number), expires in unreleased.items():
                if expires is not None and time.time() >= expires:
                    continue
                try:
                    await asyncio.to_thread(self._remove_tickets, conversation_id, ticket_number, expires)
                except RedisError as error:
                    logger.warning(
                        "Stopping with the lock of conversation %s unreleased (%s); it expires.", conversation_id, error
                    )

        try:
            await bounded(release_all(), timeout)
        except asyncio.TimeoutError:
            logger.warning("Stopping with %d lock(s) unreleased after %.0f s; they expire.", len(unreleased), timeout)

    async def _clean_up_again(self, conversation_id: str, ticket_number: int, expires: Optional[float]) -> None:
        try:
            await self._retry_clean_up(conversation_id, ticket_number, expires)
        finally:
            self._unreleased.pop((conversation_id, ticket_number), None)

    async def _retry_clean_up(self, conversation_id: str, ticket_number: int, expires: Optional[float]) -> None:
        for attempt, pause in enumerate(self.clean_up_again.delays):
            await asyncio.sleep(pause)
            if expires is not None and time.time() >= expires:
                return  # expired: Redis drops it with the next look at the lock
            try:
                # A thread: Redis may still not answer, and Rasa's client waits for it.
                await asyncio.to_thread(self._remove_tickets, conversation_id, ticket_number, expires)
            except RedisError:
                if attempt == len(self.clean_up_again.delays) - 1:
                    logger.warning(
                        "Gave up releasing the lock of conversation %s: its next turn waits for the ticket to expire.",
                        conversation_id,
                    )
                continue
            logger.info("Released the lock of conversation %s after Redis came back.", conversation_id)
            return


async def release_before_exit(agent: Any, timeout: float) -> None:
    """Give the releases the agent's lock store still owes one last try (a
    graceful shutdown); nothing for any other lock store."""
    lock_store = getattr(agent, "lock_store", None)
    if isinstance(lock_store, AtomicRedisLockStore):
        await lock_store.stop(timeout)
