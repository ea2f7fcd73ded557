"""What ServiceNow keeps of a Virtual Agent conversation, in its own table shapes, for the Table API (``table.py``).

Three tables, as a real instance has them (sources and the fields marked [I] are listed in docs/emulator.md):

* ``sys_cs_conversation``: one record per conversation; ``state`` ``open`` until it ends, then ``completed``,
  ``canceled`` (abandoned) or ``faulted``, with ``conversation_completed`` set.
* ``interaction``: one record per conversation (``channel_metadata_table`` ``sys_cs_conversation``,
  ``channel_metadata_document`` its sys_id), keyed for a bot-to-bot client by ``client_session_id``; its ``sys_id`` is
  the ``interactionId`` every push carries. ``state`` ``work_in_progress`` while it lasts, then ``closed_complete``,
  ``closed_abandoned`` or ``faulted`` with a ``state_reason`` and ``active`` false.
* ``sys_cs_message``: every message of the conversation, both ways, numbered by ``sequence`` (1, 2, ... per
  conversation, in the order the instance made them). An outbound record's ``sys_id`` is the ``messageId`` of the
  push body item that carries it, and the record exists before the push leaves: a reader that finds a gap can
  always fill it from here.

Which body items are messages: everything the user reads or that changes the chat (``OutputText`` and the other
output controls, ``ActionMsg`` ``System``, ``SwitchToLiveAgent``, ``SwitchToVirtualAgent``, ``CreateConversation``).
Typing indicators, spinners and the ``SubscribeTo...`` signals steer a widget and are not kept [I], so they carry no
``messageId`` either.

A conversation that ends (user, agent with ``close_style: "completed"``, timeout, no agents, fault) closes both the
conversation and the interaction before the push that says so goes out. An agent's close with ``close_style:
"switch"`` hands the conversation back to the Virtual Agent: conversation and interaction stay open, the interaction
loses its ``assigned_to``, and the end of the live chat is the ``SwitchToVirtualAgent`` message record [I].
"""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, Mapping, Optional

from .state import (
    CONVERSATION_CANCELED,
    CONVERSATION_COMPLETED,
    CONVERSATION_FAULTED,
    ConversationTables,
    CsConversation,
    CsMessage,
    EmulatorState,
    InteractionRecord,
    UserRecord,
    VaSession,
    new_sys_id,
)

log = logging.getLogger("connectors.servicenow.emulator.va")

#: ``ActionMsg`` types that are messages (kept and given a ``messageId``); other action types are widget signals.
MESSAGE_ACTIONS = frozenset({"System", "SwitchToLiveAgent", "SwitchToVirtualAgent", "CreateConversation"})

INTERACTION_CLOSED_COMPLETE = "closed_complete"
INTERACTION_CLOSED_ABANDONED = "closed_abandoned"
INTERACTION_FAULTED = "faulted"

#: ``interaction.state_reason`` values of va-interactions.md [V labels].
USER_ENDED = "User Ended"
AGENT_ENDED = "Agent Ended"
LEFT_BEFORE_ENGAGEMENT = "Left Before Engagement"
NO_ACTIVITY = "No Activity"
NO_USER_RESPONSE = "No User Response"
NO_AGENT_AVAILABLE = "No Agent Available"  # [I]: no source names this reason
ERROR = "Error"

#: Interaction state and conversation state per kind of end.
_ENDS = {
    INTERACTION_CLOSED_COMPLETE: CONVERSATION_COMPLETED,
    INTERACTION_CLOSED_ABANDONED: CONVERSATION_CANCELED,
    INTERACTION_FAULTED: CONVERSATION_FAULTED,
}


def tables(state: EmulatorState) -> ConversationTables:
    return state.va_tables


# ---------------------------------------------------------------------------------------------------------------------
# Lifecycle


def open_conversation(state: EmulatorState, session: VaSession) -> None:
    """A new conversation for ``session``: its ``sys_cs_conversation`` and ``interaction`` (whose sys_id becomes the
    session's ``interactionId``)."""
    now = state.clock.now_ms()
    store = tables(state)
    conversation = CsConversation(sys_id=new_sys_id(), created_ms=now, updated_ms=now)
    interaction = InteractionRecord(
        sys_id=new_sys_id(),
        number=store.next_number(),
        conversation=conversation.sys_id,
        client_session_id=session.client_session_id,
        user_id=session.key[1],
        opened_ms=now,
        updated_ms=now,
    )
    store.conversations[conversation.sys_id] = conversation
    store.interactions[interaction.sys_id] = interaction
    store.interactions_by_session.setdefault(interaction.client_session_id, []).append(interaction)
    session.conversation_id = conversation.sys_id
    session.interaction_id = interaction.sys_id


def interaction_of(state: EmulatorState, session: VaSession) -> InteractionRecord:
    return tables(state).interactions[session.interaction_id]


def conversation_of(state: EmulatorState, session: VaSession) -> CsConversation:
    return tables(state).conversations[session.conversation_id]


def queued(state: EmulatorState, session: VaSession) -> None:
    """The conversation asked for a live agent."""
    interaction = interaction_of(state, session)
    interaction.agent_chat = True
    interaction.updated_ms = state.clock.now_ms()


def assigned(state: EmulatorState, session: VaSession, agent: Optional[UserRecord]) -> None:
    """An agent took the chat (accept, transfer), or ``None``: the chat went back to the Virtual Agent."""
    now = state.clock.now_ms()
    interaction = interaction_of(state, session)
    interaction.assigned_to = agent
    interaction.updated_ms = now
    conversation = conversation_of(state, session)
    if agent is not None and conversation.live_agent_transfer_ms is None:
        conversation.live_agent_transfer_ms = now
    conversation.updated_ms = now


def ended(state: EmulatorState, session: VaSession, interaction_state: str, reason: str) -> None:
    """The conversation is over: the interaction closes with ``reason``, the conversation follows."""
    now = state.clock.now_ms()
    interaction = interaction_of(state, session)
    if interaction.closed_ms is not None:
        return
    interaction.state, interaction.state_reason = interaction_state, reason
    log.info(
        "VA chat %s ended: %s, %s (%d messages)",
        session.client_session_id, interaction_state, reason, len(session.messages),
    )
    interaction.closed_ms = interaction.updated_ms = now
    conversation = conversation_of(state, session)
    conversation.state = _ENDS[interaction_state]
    conversation.completed_ms = conversation.updated_ms = now


# ---------------------------------------------------------------------------------------------------------------------
# Messages


def is_message(item: Mapping[str, Any]) -> bool:
    """Whether a push body item is a message the instance keeps (see the module docstring)."""
    if item.get("uiType") == "ActionMsg":
        return item.get("actionType") in MESSAGE_ACTIONS
    return True


def add_outbound(state: EmulatorState, session: VaSession, item: Dict[str, Any]) -> Optional[CsMessage]:
    """Keep a body item about to be pushed; gives it a ``messageId`` when it has none. ``None`` for widget
    signals, which are not kept."""
    if not is_message(item):
        return None
    if not isinstance(item.get("messageId"), str) or not item["messageId"]:
        item["messageId"] = new_sys_id()
    agent_info = item.get("agentInfo")
    from_agent = isinstance(agent_info, dict) and agent_info.get("sentFromAgent") is True
    system = item.get("uiType") == "ActionMsg"
    if from_agent:
        sender = session.agent.user_name if session.agent is not None else str(agent_info.get("agentName", ""))
    else:
        sender = "system" if system else "virtual_agent"
    return _add(
        state,
        session,
        sys_id=item["messageId"],
        direction="outbound",
        is_agent=from_agent,
        is_bot_message=not from_agent and not system,
        sender=sender,
        payload=item,
    )


def add_inbound(state: EmulatorState, session: VaSession, message: Mapping[str, Any], sys_id: str) -> CsMessage:
    """Keep a user message the connector sent (``message`` as it came, ``sys_id`` the transcript's)."""
    return _add(
        state,
        session,
        sys_id=sys_id,
        direction="inbound",
        is_agent=False,
        is_bot_message=False,
        sender=session.key[1],
        payload=dict(message),
    )


def delivery_reported(state: EmulatorState, message_id: str, status: str) -> None:
    """UPDATE_MESSAGES: the connector says what became of a pushed message."""
    record = tables(state).messages_by_id.get(message_id)
    if record is not None:
        record.external_chat_status = status
        record.updated_ms = state.clock.now_ms()


def _add(
    state: EmulatorState,
    session: VaSession,
    *,
    sys_id: str,
    direction: str,
    is_agent: bool,
    is_bot_message: bool,
    sender: str,
    payload: Mapping[str, Any],
) -> CsMessage:
    now = state.clock.now_ms()
    store = tables(state)
    conversation = conversation_of(state, session)
    conversation.last_sequence += 1
    conversation.updated_ms = now
    record = CsMessage(
        sys_id=sys_id,
        conversation=conversation.sys_id,
        sequence=conversation.last_sequence,
        direction=direction,
        is_agent=is_agent,
        is_bot_message=is_bot_message,
        sender=sender,
        payload=json.dumps(payload, separators=(",", ":")),
        created_ms=now,
        updated_ms=now,
    )
    store.messages.append(record)
    store.messages_by_id[record.sys_id] = record
    store.messages_by_conversation.setdefault(record.conversation, []).append(record)
    return record
