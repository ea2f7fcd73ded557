"""What the connector itself says to the user, with defaults that the
``messages`` option of ``credentials.yml`` can override one by one, and that
a domain response ``utter_servicenow_<name>`` overrides in turn (``speech.py``).

Placeholders use ``str.format`` names: ``{chat_id}`` and ``{last_message_at}``
in ``connection_lost``; ``{position}`` and ``{wait_time}`` in the ``waiting``
texts; ``{idle_time}`` in ``user_idle_agent``; ``{next_opening}`` in
``outside_hours``. A placeholder a text does not know is left as written.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

from connectors.servicenow.errors import ConfigurationError

#: The domain response that says the text ``<name>`` is ``utter_servicenow_<name>``.
RESPONSE_PREFIX = "utter_servicenow_"


@dataclass(frozen=True)
class UserTexts:
    #: The chat is open in ServiceNow and waits for an agent.
    connecting: str = "I'm connecting you to a live agent. Please wait here; they will answer in this chat."
    #: ServiceNow could not open a chat; the user stays with the bot.
    start_failed: str = (
        "Sorry, I couldn't reach a live agent right now. Please try again in a few minutes."
    )
    #: The user typed an end command such as ``/end_chat``.
    user_ended: str = "You have left the chat with the agent. You're back with the virtual assistant."
    #: The user's end command could not be saved (the tracker store failed); the chat goes on.
    end_failed: str = (
        "Sorry, I couldn't end the chat with the agent just now. You're still connected to them; "
        "please try again in a moment."
    )
    #: The agent closed the chat, or ServiceNow closed it (timeout, escalation).
    agent_closed: str = "The agent has closed the chat. You're back with the virtual assistant."
    #: ServiceNow handed the chat back: no agent available, the chat timed out, ...
    chat_ended: str = "The live chat has ended. You're back with the virtual assistant."
    #: ServiceNow kept failing; the chat was left cleanly.
    connection_lost: str = (
        "Sorry, we lost the connection to the live agent. Chat {chat_id}, last message at "
        "{last_message_at}. You're back with the virtual assistant; if you still need help, "
        "ask for a live agent again."
    )
    #: Appended to ``connection_lost`` when the user's own message did not get through.
    message_not_delivered: str = "Your last message could not be delivered to the agent."
    #: ServiceNow kept failing and leaving the chat failed as well (wording required by the product).
    session_lost: str = (
        "The chat session is closed/could not be located. Please try reconnecting to live agent "
        "if you still need help!"
    )

    #: socket.io only: the store could not say where the message goes, so it went nowhere (the webhook answers 503).
    message_not_handled: str = "Sorry, I couldn't handle your last message just now. Please send it again in a moment."

    #: ``max_live_chats`` live chats are open already; the user stays with the bot.
    handoff_busy: str = (
        "All our agents are busy right now, so I can't connect you. Please try again in a few minutes."
    )
    #: The conversation asked for an agent more than ``handoff_starts_per_minute`` times in a minute.
    handoff_rate_limited: str = (
        "You've asked for a live agent several times in a short while. Please wait a minute, then try again."
    )
    #: A file the user sent during a handoff was not passed to the agent (wrong type,
    #: too large, unreachable). Placeholders: ``{name}``, ``{max_size}`` (e.g. ``10 MB``).
    attachment_refused: str = (
        "Sorry, I couldn't pass {name} to the agent. You can send images, PDF, text and Office files "
        "of up to {max_size}."
    )

    # -- waiting for an agent, and a user who walked away (core/timeouts.py) -
    #: Every ``waiting_notice_interval`` while no agent has joined, when ServiceNow tells nothing about the queue.
    waiting: str = "Thanks for waiting. All our agents are still busy; one will be with you as soon as possible."
    #: The same, when ServiceNow gives the place in the queue (Connect); ``{wait_time}`` works here too.
    waiting_position: str = (
        "Thanks for waiting. You're number {position} in the queue; an agent will be with you as soon as possible."
    )
    #: The same, when ServiceNow gives only a wait estimate (Virtual Agent's wait spinner).
    waiting_wait_time: str = "Thanks for waiting. An agent should be with you in {wait_time}."
    #: No agent accepted within ``agent_wait_timeout``; the chat was left.
    no_agent: str = (
        "Sorry, no agent could take your chat in time, so I've withdrawn the request. "
        "You're back with the virtual assistant; you can ask for a live agent again later."
    )
    #: The user sent nothing for ``user_idle_timeout`` during a live chat; the chat was left.
    user_idle: str = (
        "The chat with the agent was closed because we didn't hear from you for a while. "
        "You're back with the virtual assistant."
    )
    #: Sent to the agent (not the user) just before an idle user's chat is left.
    user_idle_agent: str = "The user has not written for {idle_time}; the virtual assistant is closing this chat."

    # -- before a chat opens (availability.py) ---------------------------------
    #: Outside ``business_hours``; no chat was opened.
    outside_hours: str = (
        "Our live agents are not available right now. They are back on {next_opening}; "
        "until then I'm happy to help as best I can."
    )
    #: The Connect queue says nobody is available (``not_available``); no chat was opened.
    no_agent_available: str = (
        "Sorry, no live agent is available right now. Please try again later; until then I'm happy to help."
    )

    @classmethod
    def from_options(cls, options: Optional[Mapping[str, Any]]) -> "UserTexts":
        if not options:
            return cls()
        if not isinstance(options, Mapping):
            raise ConfigurationError("'messages' must be a mapping of message name to text.")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigurationError(
                f"Unknown entries under 'messages': {', '.join(unknown)}. "
                f"Known entries: {', '.join(sorted(known))}."
            )
        overrides: Dict[str, str] = {}
        for name, text in options.items():
            if not isinstance(text, str) or not text.strip():
                raise ConfigurationError(f"'messages.{name}' must be a non-empty string.")
            overrides[name] = text
        return cls(**overrides)


def text_names() -> List[str]:
    """Every text the channel says (the fields of ``UserTexts``)."""
    return [item.name for item in dataclasses.fields(UserTexts)]


def response_name(name: str) -> str:
    """The domain response that says the text ``name``."""
    return f"{RESPONSE_PREFIX}{name}"
