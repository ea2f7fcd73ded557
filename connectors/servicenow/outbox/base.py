"""What the outbox carries and what its sinks share: the items, their kinds,
the refusal of a stream beyond a cap, and POSTing an item with retries.

An item is stored before anyone is told it was sent. Its id is the store's
entry id (``<ms>-<n>``): its place in the conversation's stream and its SSE
event id, valid on every replica and across restarts of a shared store.
"""

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Sequence

import aiohttp

from connectors.servicenow.config import RetryPolicy
from connectors.servicenow.retry import backoff_delay
from connectors.servicenow.signing import CallbackSigner, delivery_id
from connectors.servicenow.store import NewEntry, OutboxEntry
from connectors.servicenow.store.base import dump_payload

logger = logging.getLogger(__name__)

MESSAGE_EVENT = "message"
TYPING_EVENT = "typing"
HANDOFF_EVENT = "handoff"
#: Items a conversation's stream keeps for sinks that come later (the store's ``retained``).
RETAINED_PER_USER = 200
#: How a POST to ``callback_url`` is retried before the item is given up.
CALLBACK_RETRY = RetryPolicy(attempts=4, backoff=0.5, max_backoff=4.0)

PER_SENDER = "sender"
PER_CLIENT = "client"
IN_TOTAL = "total"

#: Told when a sink took an entry: (recipient, entry, delivered). Runs on the
#: replica whose sink took it, once per entry for the deployment: the callback
#: answered (True) or was given up (False); without a callback, the first
#: stream or socket that took it (True).
OnTaken = Callable[[str, OutboxEntry, bool], None]
#: Told (entry id, sink name) when an item reached the user through a sink (metrics).
OnDelivered = Callable[[str, str], None]


@dataclass(frozen=True)
class OutboundItem:
    event_id: str
    #: SSE event name: ``message``, ``typing`` or ``handoff``.
    kind: str
    payload: Mapping[str, Any]
    #: Whether the callback receives it as well as the streams.
    to_callback: bool = True

    def sse(self) -> str:
        return f"id: {self.event_id}\nevent: {self.kind}\ndata: {json.dumps(self.payload)}\n\n"


#: One item to put in a user's outbox (payload, kind, whether the callback
#: gets it, and a guarded put's once key): what the store appends, as it is,
#: rather than a copy made of it for every agent message.
Outgoing = NewEntry


def item_of(entry: OutboxEntry) -> OutboundItem:
    return OutboundItem(entry.entry_id, entry.kind, entry.payload, entry.to_callback)


def unstored(items: Sequence[Outgoing]) -> List[OutboundItem]:
    """Items waiting in this process for the store: no id yet."""
    return [OutboundItem("", item.kind, item.payload, item.to_callback) for item in items]


def status_item(
    recipient_id: str,
    *,
    active: bool,
    chat_id: str,
    api: str,
    agent_joined: bool = False,
    agent_name: Optional[str] = None,
) -> Outgoing:
    """A handoff status event: streams only (a callback consumer expecting
    Rasa's message shape gets no status objects)."""
    status: Dict[str, Any] = {"active": active, "chat_id": chat_id, "api": api, "agent_joined": agent_joined}
    if agent_name:
        status["agent_name"] = agent_name
    return Outgoing({"recipient_id": recipient_id, "handoff": status}, HANDOFF_EVENT, to_callback=False)


class StreamLimitReached(Exception):
    """A new stream or socket would exceed a cap on open ones."""

    def __init__(self, scope: str, limit: int) -> None:
        where = {PER_SENDER: "for this conversation", PER_CLIENT: "from this client"}.get(scope, "in total")
        super().__init__(f"{limit} open stream(s) {where}")
        #: ``PER_SENDER``, ``PER_CLIENT`` or ``IN_TOTAL``.
        self.scope = scope
        self.limit = limit


async def post_with_retries(
    session: aiohttp.ClientSession,
    url: str,
    entry: OutboxEntry,
    recipient_id: str,
    *,
    signer: Optional[CallbackSigner] = None,
    may_retry: Optional[Callable[[], Awaitable[bool]]] = None,
) -> bool:
    """POST one entry to the callback URL, retried with backoff; True once it
    answered below 400. Every attempt carries the entry's delivery id and, with
    ``signer`` signing, a signature over the exact body (signing.py).
    ``may_retry`` is asked before each retry (the poster checks that it still
    holds the conversation)."""
    problem = ""
    kind = entry.kind
    body = dump_payload(dict(entry.payload)).encode()
    webhook_id = delivery_id(recipient_id, entry.entry_id)
    signer = signer or CallbackSigner(None)
    for attempt in range(1, CALLBACK_RETRY.attempts + 1):
        if attempt > 1 and may_retry is not None and not await may_retry():
            problem = "another replica took over"
            break
        # A fresh timestamp (and signature) per attempt, the same id.
        headers = {"Content-Type": "application/json", **signer.headers(webhook_id, body)}
        try:
            async with session.post(url, data=body, headers=headers) as response:
                if response.status < 400:
                    return True
                problem = f"HTTP {response.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            problem = type(error).__name__
        if attempt < CALLBACK_RETRY.attempts:
            await asyncio.sleep(backoff_delay(CALLBACK_RETRY, attempt))
    logger.error(
        "Giving up delivering a %s item to the callback for %s after %d attempts (%s).",
        kind, recipient_id, CALLBACK_RETRY.attempts, problem,
    )
    return False
