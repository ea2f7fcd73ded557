"""What a soak run saw, recorded as plain JSON-able dicts: the only input of
the checker. Times are wall-clock seconds (``time.time()``), the clock the
emulator stamps its transcripts with, so the two can be compared.

Keys of a history (each a list of dicts unless said otherwise):

``meta``          the run's arguments and start time (dict)
``faults``        ``{kind, deployment, replica, params, planned_at, started, lifted, rules: [rule ids], note}``
``sends``         a user's request: ``{user, api, session, kind, text, attempts: [{t, done, status, reason,
                  upstream, replies}]}``; ``kind`` is ``bot``, ``start``, ``handoff``, ``end`` or ``typing``
``received``      what reached a user: ``{user, sink, t, event, text, source, event_id, conn, chat_id, active}``;
                  ``sink`` is ``sse`` or ``callback``
``streams``       each SSE connection: ``{user, conn, t, status, reason, upstream, last_event_id, closed, why}``
``user_events``   ``{user, t, what, session, detail}``: ``handoff_started``, ``end_requested``, ``ended``
                  (``detail``: how), ``stuck`` (waited in vain for the end), ``start_failed``
``agent_sends``   ``{chat, api, user, session, index, text, t, done, status, message_id}``
``agent_closes``  ``{chat, api, user, session, t, done, status}``
``chats``         the agent's view of each chat it accepted: ``{chat, api, user, session, accepted}``
``transcripts``   emulator transcripts: ``{chat: {api, user_id, state, messages: [{text, created_by, timestamp}]}}``
                  (dict)
``callbacks``     the emulator's push log: ``{callback_id, session, attempt, outcome, status, at, fault,
                  duplicate, message_ids, actions}``
``fault_rules``   ``{rule id: {kind, delay_ms, duplicate, drop}}`` (dict)
``final``         per user at the end: ``{user: {record, slot}}`` (dict): the Redis handoff record and the
                  tracker's ``handoff_active``
``remedied``      users found in a handoff at the end, and what one more message did: ``{user, before, after}``
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List


class Recorder:
    """Appends to an in-memory history; written once at the end."""

    def __init__(self, meta: Dict[str, Any]) -> None:
        self.history: Dict[str, Any] = {
            "meta": meta,
            "faults": [],
            "sends": [],
            "received": [],
            "streams": [],
            "user_events": [],
            "agent_sends": [],
            "agent_closes": [],
            "chats": [],
            "transcripts": {},
            "callbacks": [],
            "fault_rules": {},
            "final": {},
            "remedied": [],
        }

    def add(self, key: str, **record: Any) -> Dict[str, Any]:
        self.history[key].append(record)
        return record

    def user_event(self, user: str, what: str, session: int, detail: str = "") -> None:
        self.add("user_events", user=user, t=time.time(), what=what, session=session, detail=detail)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.history))


def load(path: Path) -> Dict[str, Any]:
    return json.loads(Path(path).read_text())


def empty_history(**meta: Any) -> Dict[str, Any]:
    """A history with nothing in it (the tests build synthetic ones on it)."""
    return Recorder(dict(meta)).history


def records(history: Dict[str, Any], key: str) -> List[Dict[str, Any]]:
    return list(history.get(key) or [])
