"""How the channel says its texts: a domain response ``utter_servicenow_<name>``
through Rasa's NLG when there is one, else the ``messages`` option, else the
built-in default (``UserTexts``).

Through the NLG, a team gets what its other responses have: variations, slot
conditions (a ``language`` slot), channel-specific variations, buttons and
images, and a custom NLG server from ``endpoints.yml``. The names follow the
fields of ``UserTexts``, so a field added there is sayable from the domain at
once.

Saying a text never fails a handoff: an NLG that errs, times out or gives
nothing falls back to the configured text, with a warning that carries no
message body. With Rasa's own (templated) NLG and no such response in the
domain, nothing is loaded and nothing is awaited: the configured text costs
what it did before.
"""

import asyncio
import dataclasses
import logging
import string
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from rasa.core.nlg import NaturalLanguageGenerator, TemplatedNaturalLanguageGenerator
from rasa.shared.core.trackers import DialogueStateTracker

from connectors.servicenow.markdown import is_inert
from connectors.servicenow.rasa_glue.channels import Agent, AgentSource
from connectors.servicenow.rasa_glue.versions import nlg_output_channel
from connectors.servicenow.tasks import bounded
from connectors.servicenow.texts import UserTexts, response_name

logger = logging.getLogger(__name__)

Messages = List[Dict[str, Any]]

#: The output channel name handed to the NLG (``channel:`` variations).
CHANNEL_NAME = "servicenow"
#: Longest wait for the tracker and the NLG together before the configured
#: text is said instead: a slow NLG server must not hold a handoff up.
RENDER_TIMEOUT_S = 3.0
#: The keys of an NLG answer that reach the user (Rasa's bot message fields).
MESSAGE_KEYS = ("text", "buttons", "quick_replies", "image", "attachment", "custom", "elements")
#: One warning per text name within this many seconds: a failing NLG server
#: must not flood the log with one line per notice.
WARN_EVERY_S = 60.0


@dataclass(frozen=True)
class Line:
    """One text to say, by its ``UserTexts`` name, with its placeholders."""

    name: str
    placeholders: Mapping[str, Any] = field(default_factory=dict)


class _KeepUnknown(Dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def fill(template: str, placeholders: Mapping[str, Any]) -> str:
    """``template`` with its ``{name}`` placeholders filled; unknown names are
    kept as written, and a template ``str.format`` cannot read is said as is."""
    if "{" not in template:
        return template
    try:
        return string.Formatter().vformat(template, (), _KeepUnknown(placeholders))
    except (ValueError, IndexError, AttributeError, KeyError):
        return template


def bot_metadata(line: Line) -> Dict[str, Any]:
    """The metadata of a channel text. ``markdown: false`` when a value filled
    into it (a wait time or agent name from ServiceNow, a user's file name)
    has characters Markdown reads as syntax, or line breaks: a frontend that
    renders Markdown then shows the whole text as written, so no value can
    turn the author's text into a link (docs/socketio.md)."""
    if all(is_inert(str(value)) for value in line.placeholders.values()):
        return {"source": "bot"}
    return {"source": "bot", "markdown": False}


class Speech:
    """Renders the channel's texts for one conversation at a time.

    ``agent`` returns the Rasa agent serving the channel (None before it is
    loaded: then the configured texts are said)."""

    def __init__(
        self,
        texts: UserTexts,
        agent: AgentSource,
        *,
        channel: str = CHANNEL_NAME,
        timeout_s: float = RENDER_TIMEOUT_S,
    ) -> None:
        self.texts = texts
        self._agent = agent
        self._channel = nlg_output_channel(channel)
        self._timeout_s = timeout_s
        self._known = frozenset(item.name for item in dataclasses.fields(texts))
        self._warned: Dict[str, float] = {}

    async def say(self, sender_id: str, name: str, /, **placeholders: Any) -> Messages:
        """The bot messages that say the text ``name`` to ``sender_id``
        (positional-only, so that ``{name}`` can be a placeholder)."""
        return await self.say_lines(sender_id, [Line(name, placeholders)])

    async def say_lines(self, sender_id: str, lines: Sequence[Union[str, Line]]) -> Messages:
        """The bot messages that say each line in turn (a str is a line
        without placeholders); the tracker is loaded at most once."""
        wanted = [Line(line) if isinstance(line, str) else line for line in lines]
        for line in wanted:
            if line.name not in self._known:
                raise ValueError(f"unknown text {line.name!r}; texts are the fields of UserTexts")
        agent = self._agent()
        if not self._may_render(agent, wanted):
            return [self.configured(sender_id, line) for line in wanted]
        try:
            return await bounded(self._render(agent, sender_id, wanted), self._timeout_s)
        except asyncio.TimeoutError:
            self._warn(wanted, f"the NLG took longer than {self._timeout_s:g} s")
        except Exception as error:  # any NLG failure: the configured text is said instead
            self._warn(wanted, f"{type(error).__name__}")
        return [self.configured(sender_id, line) for line in wanted]

    def configured(self, sender_id: str, line: Line) -> Dict[str, Any]:
        """The line from the ``messages`` option or the built-in default."""
        text = fill(getattr(self.texts, line.name), line.placeholders)
        return {"recipient_id": sender_id, "text": text, "metadata": bot_metadata(line)}

    @staticmethod
    def _may_render(agent: Optional[Agent], lines: Sequence[Line]) -> bool:
        """Whether the agent's NLG may have something to say for these lines:
        not when Rasa's own NLG has no such response (then this costs nothing).
        A custom NLG cannot be asked what it knows, so it always may."""
        nlg = getattr(agent, "nlg", None) if agent is not None else None
        if nlg is None:
            return False
        if isinstance(nlg, TemplatedNaturalLanguageGenerator):
            responses = nlg.responses or {}
            return any(response_name(line.name) in responses for line in lines)
        return True

    async def _render(self, agent: Agent, sender_id: str, lines: Sequence[Line]) -> Messages:
        nlg: NaturalLanguageGenerator = agent.nlg
        tracker = await self._tracker(agent, sender_id)
        domain_responses = agent.domain.responses if agent.domain is not None else {}
        # Rasa's own NLG knows its responses: the others are not asked for.
        known = (nlg.responses or {}) if isinstance(nlg, TemplatedNaturalLanguageGenerator) else None
        messages: Messages = []
        for line in lines:
            utter = response_name(line.name)
            rendered: Optional[Dict[str, Any]] = None
            if known is None or utter in known:
                try:
                    generated = await nlg.generate(
                        utter, tracker, self._channel, domain_responses=domain_responses, **dict(line.placeholders)
                    )
                except Exception as error:  # one line failing does not take the others with it
                    self._warn([line], type(error).__name__)
                    generated = None
                rendered = self._message(sender_id, line, generated)
            messages.append(rendered if rendered is not None else self.configured(sender_id, line))
        return messages

    @staticmethod
    async def _tracker(agent: Agent, sender_id: str) -> DialogueStateTracker:
        """The conversation's tracker for slot conditions; a fresh one when
        the store cannot give it (the unconditional variations are said)."""
        slots = list(agent.domain.slots) if agent.domain is not None else []
        store = getattr(agent, "tracker_store", None)
        if store is not None:
            try:
                tracker = await store.retrieve(sender_id)
            except Exception as error:
                logger.warning(
                    "Rendering a notice for conversation %s without its tracker: %s", sender_id, type(error).__name__
                )
                tracker = None
            if tracker is not None:
                return tracker
        return DialogueStateTracker(sender_id, slots)

    @staticmethod
    def _message(sender_id: str, line: Line, generated: Any) -> Optional[Dict[str, Any]]:
        """A bot message from an NLG answer; None when it says nothing."""
        if not isinstance(generated, dict):
            return None
        message: Dict[str, Any] = {"recipient_id": sender_id}
        for key in MESSAGE_KEYS:
            value = generated.get(key)
            if value not in (None, "", [], {}):
                message[key] = value
        if len(message) == 1:
            return None
        message["metadata"] = {**bot_metadata(line), "utter_action": response_name(line.name)}
        return message

    def _warn(self, lines: Sequence[Line], reason: str) -> None:
        now = time.monotonic()
        names = [line.name for line in lines if now - self._warned.get(line.name, -WARN_EVERY_S) >= WARN_EVERY_S]
        if not names:
            return
        for name in names:
            self._warned[name] = now
        logger.warning(
            "Rendering %s through the NLG failed (%s); saying the configured text instead.",
            ", ".join(response_name(name) for name in names), reason,
        )
