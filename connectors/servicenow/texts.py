"""What the connector itself says to the user, with defaults that the
``messages`` option of ``credentials.yml`` can override one by one.

Placeholders use ``str.format`` names: ``{chat_id}`` and ``{last_message_at}``
in ``connection_lost``.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

from connectors.servicenow.errors import ConfigurationError


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
