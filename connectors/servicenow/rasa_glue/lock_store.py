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
(``lock``, ``_acquire_lock``) stays Rasa's.

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

import time
from typing import Any, Optional

from rasa.core.lock_store import LOCK_LIFETIME, LockError, RedisLockStore
from rasa.utils.endpoints import EndpointConfig

from connectors.servicenow.rasa_glue.versions import init_redis_lock_store

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
# ('' for none: only expired tickets go). The lock goes when no ticket is left.
_REMOVE = _TICKETS_FUNCTION + """
local value = redis.call('GET', KEYS[1])
if not value then return 0 end
local kept = {}
for _, ticket in ipairs(live_tickets(value, tonumber(ARGV[1]))) do
  if ARGV[3] == '' or tonumber(ticket['number']) ~= tonumber(ARGV[3]) then kept[#kept + 1] = ticket end
end
store(KEYS[1], ARGV[2], kept)
return #kept
"""


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

    def issue_ticket(self, conversation_id: str, lock_lifetime: float = LOCK_LIFETIME) -> int:
        try:
            number = self._issue(
                keys=[self.key_prefix + conversation_id], args=[time.time(), conversation_id, lock_lifetime], client=self.red
            )
        except Exception as error:  # as Rasa's: any failure to get a ticket is a LockError
            raise LockError(f"Error while acquiring lock. Error:\n{error}") from error
        return int(number)

    def finish_serving(self, conversation_id: str, ticket_number: int) -> None:
        self._remove_tickets(conversation_id, ticket_number)

    def cleanup(self, conversation_id: str, ticket_number: int) -> None:
        """Remove the ticket, and the lock if no ticket is left, in one step."""
        self._remove_tickets(conversation_id, ticket_number)

    def update_lock(self, conversation_id: str) -> None:
        """Drop expired tickets, in one step."""
        self._remove_tickets(conversation_id, None)

    def _remove_tickets(self, conversation_id: str, ticket_number: Optional[int]) -> None:
        number = "" if ticket_number is None else ticket_number
        self._remove(keys=[self.key_prefix + conversation_id], args=[time.time(), conversation_id, number], client=self.red)
