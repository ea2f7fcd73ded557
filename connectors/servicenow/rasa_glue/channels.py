"""The Rasa classes the front doors build on, imported in one place."""

from typing import Callable, Optional

from rasa.core.agent import Agent
from rasa.core.channels.channel import CollectingOutputChannel, InputChannel, OutputChannel, UserMessage
from rasa.core.channels.socketio import SocketBlueprint

#: How the connector reaches the running agent: Rasa sets ``app.ctx.agent``
#: once the model is loaded (None before that).
AgentSource = Callable[[], Optional[Agent]]

__all__ = [
    "Agent",
    "AgentSource",
    "CollectingOutputChannel",
    "InputChannel",
    "OutputChannel",
    "SocketBlueprint",
    "UserMessage",
]
