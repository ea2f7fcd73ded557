"""Every name the connector gives to state in a store, each prefix with one
meaning.

Two levels of names:

* **Redis keys** (``redis.py``): ``<prefix><kind><name>``, where ``prefix``
  is the ``redis_prefix`` option and the kind says what the key holds. The
  table in docs/deployment.md lists them.
* **Names the core chooses** for the store's methods: lease names, dedupe
  keys, timer names, stream and sink names. The store keeps the namespaces of
  its methods apart (a lease ``poll:x`` and a timer ``idle:x`` never meet), and
  within a namespace each prefix below means one thing.
"""

from typing import Optional, Tuple

# -- Redis key kinds ---------------------------------------------------------

#: ``<sender_id>``: the handoff record.
HANDOFF = "h:"
#: ``<chat_id>``: the sender id of the chat's handoff (the index by chat id).
CHAT_INDEX = "c:"
#: ``<stream>``: the outbox stream (and the pub/sub channel of its append notices).
OUTBOX = "o:"
#: ``<stream>``: the stream's sink pointers.
SINKS = "s:"
#: ``<dedupe key>``: a dedupe mark.
DEDUPE = "d:"
#: ``<lease name>``: who holds the lease.
LEASE = "l:"
#: The registered lease names, scored by expiry.
LEASES = "leases"
#: The timers, scored by due time.
TIMERS = "timers"
#: The pub/sub channel that keeps the notice connection subscribed while idle.
NOTICES = "notices"
#: The pub/sub channel of python-socketio's Redis manager (the socket.io door).
SOCKETIO_MANAGER = "socketio"
#: ``<cap name>``: the holders a cap counts, scored by when each slot expires.
SLOTS = "n:"
#: The senders with a handoff record (counted by ``max_live_chats``).
LIVE = "live"
#: Admitted handoff starts without a record yet, scored by when their place expires.
PLACES = "places"
#: ``<sender_id>``: the conversation's recent handoff starts, scored by time.
STARTS = "r:"
#: The deployment's rate of handoff starts: its theoretical arrival time (ms).
START_RATE = "rate"

# -- cap names (``take_slot``) ---------------------------------------------------

#: Open streams and socket.io sockets of the deployment.
STREAMS_CAP = "streams"


def streams_of_sender(sender_id: str) -> str:
    """Open streams and sockets of one conversation."""
    return f"{STREAMS_CAP}:s:{sender_id}"


def streams_of_client(address: str) -> str:
    """Open streams and sockets of one client address."""
    return f"{STREAMS_CAP}:c:{address}"

# -- lease names ---------------------------------------------------------------

#: ``poll:<chat id>``: polling a Connect chat.
POLL_LEASE = "poll:"
#: ``cb:<sender id>``: posting a conversation's outbox to ``callback_url``.
CALLBACK_LEASE = "cb:"


def poll_lease(chat_id: str) -> str:
    return POLL_LEASE + chat_id


def chat_of_poll_lease(name: str) -> Optional[str]:
    return name[len(POLL_LEASE) :] if name.startswith(POLL_LEASE) else None


def callback_lease(recipient_id: str) -> str:
    return CALLBACK_LEASE + recipient_id


def recipient_of_callback_lease(name: str) -> Optional[str]:
    return name[len(CALLBACK_LEASE) :] if name.startswith(CALLBACK_LEASE) else None


# -- dedupe keys ---------------------------------------------------------------

#: ``msg:<chat id>:<message id>``: an agent message delivered once per deployment.
MESSAGE_DEDUPE = "msg:"
#: ``push:<chat id>:<fingerprint>``: a Virtual Agent callback stored once.
PUSH_DEDUPE = "push:"


def message_dedupe(chat_id: str, message_id: str) -> str:
    return f"{MESSAGE_DEDUPE}{chat_id}:{message_id}"


def push_dedupe(chat_id: str, fingerprint: str) -> str:
    return f"{PUSH_DEDUPE}{chat_id}:{fingerprint}"


# -- timer names -----------------------------------------------------------------

#: ``no_agent:<chat id>``: the chat waited ``agent_wait_timeout`` for an agent.
NO_AGENT_TIMER = "no_agent"
#: ``waiting:<chat id>``: the next "still waiting" notice.
WAITING_TIMER = "waiting"
#: ``idle:<chat id>``: the user sent nothing for ``user_idle_timeout``.
IDLE_TIMER = "idle"
TIMER_KINDS = (NO_AGENT_TIMER, WAITING_TIMER, IDLE_TIMER)


def timer_name(kind: str, chat_id: str) -> str:
    return f"{kind}:{chat_id}"


def parse_timer_name(name: str) -> Optional[Tuple[str, str]]:
    """``(kind, chat id)`` of a timer the core set, or None."""
    kind, _, chat_id = name.partition(":")
    if kind not in TIMER_KINDS or not chat_id:
        return None
    return kind, chat_id


# -- outbox streams and their sinks ----------------------------------------------


def stream_of(recipient_id: str) -> str:
    """A conversation's outbox stream is named by its sender id."""
    return recipient_id


#: The callback URL's pointer: what was posted.
CALLBACK_SINK = "callback"
#: Server-Sent Events streams' pointer: what some stream has taken.
STREAM_SINK = "stream"
#: socket.io sessions' pointer: what a socket of the session was shown.
SOCKET_SINK = "socketio"
