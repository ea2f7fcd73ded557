"""The demo assistant the channel-level tests talk to.

On Rasa 3.6 it is the demo model, trained by ``make`` and loaded with Rasa's
own ``load_agent``. On Rasa Pro a model can only be trained and served with a
licence (``RASA_LICENSE``), and none is available here; so the Rasa Pro suite
talks to ``DemoAssistant``: Rasa Pro's own ``Agent`` with its own domain,
tracker store (wrapped in its ``FailSafeTrackerStore``), lock store,
templated NLG, events and output channels, in which only the trained part
(NLU and policies) is a script of the demo's training data: the keywords of
``data/nlu.yml`` (what the demo's ``KeywordIntentClassifier`` learns) and
the rules of ``data/rules.yml``. Every call the channel makes (its public
contract with Rasa: ``handle_message``, ``trigger_intent``, the stores, the
NLG, ``send_response`` on the turn's output channel) reaches Rasa Pro code.
The licensed end-to-end tests (tests/pro/test_licensed.py) run the real thing.
"""

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Iterable, List, Optional, Tuple

import yaml
from rasa.core.actions.action import create_bot_utterance
from rasa.core.agent import Agent
from rasa.core.channels.channel import OutputChannel, UserMessage
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import ActionExecuted, SessionStarted, SlotSet, UserUttered
from rasa.shared.core.trackers import DialogueStateTracker

from connectors.servicenow.rasa_glue.versions import (
    BUILTIN_LANGUAGE_SLOT,
    IS_RASA_PRO,
    nlg_output_channel,
    prepare_to_load_agent,
)

ROOT = Path(__file__).resolve().parents[1]
LISTEN = "action_listen"
SESSION_START = "action_session_start"
FALLBACK_RESPONSE = "utter_default"
#: ``/intent`` or ``/intent{"entity": "value"}``: what a button's payload sends.
INTENT_PAYLOAD = re.compile(r"^/(?P<intent>[\w-]+)(?P<entities>\{.*\})?$", re.DOTALL)


async def demo_agent(demo_model: Optional[Path], endpoints: Optional[Dict[str, Any]] = None) -> Agent:
    """The demo assistant on the installed Rasa (see the module's docstring);
    ``endpoints``: the ``tracker_store`` and ``lock_store`` of endpoints.yml."""
    from rasa.core.lock_store import LockStore
    from rasa.utils.endpoints import EndpointConfig

    configs = {key: EndpointConfig.from_dict(value) for key, value in (endpoints or {}).items() if value}
    if not IS_RASA_PRO:
        from rasa.core.agent import load_agent
        from rasa.core.utils import AvailableEndpoints

        available = AvailableEndpoints(tracker_store=configs.get("tracker_store"), lock_store=configs.get("lock_store"))
        return await load_agent(model_path=str(demo_model), endpoints=available)
    prepare_to_load_agent()
    stores: Dict[str, Any] = {}
    if "lock_store" in configs:
        stores["lock_store"] = LockStore.create(configs["lock_store"])
    return DemoAssistant.from_project(ROOT, tracker_config=configs.get("tracker_store"), **stores)


class DemoScript:
    """What the demo model learnt: intents by keyword, actions by rule."""

    def __init__(self, nlu: Dict[str, Any], rules: Dict[str, Any], domain: Dict[str, Any]) -> None:
        #: The domain's slots as written (their mappings: what ``action_extract_slots`` fills).
        self.slots: Dict[str, Dict[str, Any]] = domain.get("slots") or {}
        #: (keyword, intent) in the training data's order, as KeywordIntentClassifier keeps them.
        self.keywords: List[Tuple[str, str]] = []
        for block in nlu.get("nlu", []):
            for line in block["examples"].splitlines():
                example = line.strip().lstrip("-").strip()
                if example:
                    self.keywords.append((example, block["intent"]))
        #: intent -> [(slot conditions, action)], the conditional rules first.
        self.rules: Dict[str, List[Tuple[Dict[str, Any], str]]] = {}
        for rule in rules.get("rules", []):
            intents, conditions, actions = self._steps(rule["steps"])
            for intent in intents:
                self.rules.setdefault(intent, []).extend((conditions, action) for action in actions[:1])
        for options in self.rules.values():
            options.sort(key=lambda option: not option[0])

    @staticmethod
    def _steps(steps: Iterable[Dict[str, Any]]) -> Tuple[List[str], Dict[str, Any], List[str]]:
        intents: List[str] = []
        conditions: Dict[str, Any] = {}
        actions: List[str] = []
        for step in steps:
            if "intent" in step:
                intents.append(step["intent"])
            elif "or" in step:
                intents.extend(option["intent"] for option in step["or"])
            elif "slot_was_set" in step:
                for condition in step["slot_was_set"]:
                    conditions.update(condition)
            elif "action" in step:
                actions.append(step["action"])
        return intents, conditions, actions

    def parse(self, text: str) -> Tuple[Optional[str], List[Dict[str, Any]]]:
        payload = INTENT_PAYLOAD.match(text.strip())
        if payload:
            entities = json.loads(payload.group("entities") or "{}")
            return payload.group("intent"), [{"entity": key, "value": value} for key, value in entities.items()]
        for keyword, intent in self.keywords:
            if re.search(r"\b" + re.escape(keyword) + r"\b", text, flags=re.IGNORECASE):
                return intent, []
        return None, []

    def next_action(self, intent: Optional[str], tracker: DialogueStateTracker) -> str:
        for conditions, action in self.rules.get(intent or "", []):
            if all(tracker.get_slot(slot) == value for slot, value in conditions.items()):
                return action
        return FALLBACK_RESPONSE


class ScriptedProcessor:
    """The part of Rasa's ``MessageProcessor`` the channel calls, with the
    demo script in place of the trained graph. Everything else is Rasa's."""

    def __init__(self, agent: Agent, script: DemoScript) -> None:
        self.agent = agent
        self.script = script
        self.domain = agent.domain
        self.nlg = agent.nlg
        self.tracker_store = agent.tracker_store
        self.lock_store = agent.lock_store
        self.model_metadata = SimpleNamespace(model_id="scripted-demo", assistant_id="servicenow_handoff_demo")
        self.is_calm_assistant = False

    async def get_tracker(self, sender_id: str, *_: Any) -> DialogueStateTracker:
        return await self.tracker_store.get_or_create_tracker(sender_id)

    async def fetch_tracker_and_update_session(
        self, sender_id: str, output_channel: Optional[OutputChannel] = None, metadata: Optional[Dict] = None
    ) -> DialogueStateTracker:
        tracker = await self.get_tracker(sender_id)
        if not any(isinstance(event, SessionStarted) for event in tracker.events):
            tracker.update_with_events(
                [ActionExecuted(SESSION_START), SessionStarted(), ActionExecuted(LISTEN)], self.domain
            )
        return tracker

    async def handle_message(self, message: UserMessage) -> Optional[List[Dict[str, Any]]]:
        tracker = await self.fetch_tracker_and_update_session(message.sender_id, message.output_channel)
        intent, entities = self.script.parse(message.text or "")
        tracker.update(
            UserUttered(
                message.text,
                intent={"name": intent, "confidence": 1.0} if intent else {"name": None, "confidence": 0.0},
                entities=entities,
                input_channel=message.input_channel,
                message_id=message.message_id,
                metadata=message.metadata,
            ),
            self.domain,
        )
        await self._turn(intent, entities, tracker, message.output_channel)
        return getattr(message.output_channel, "messages", None)

    async def trigger_external_user_uttered(
        self, intent_name: str, entities: Any, tracker: DialogueStateTracker, output_channel: OutputChannel
    ) -> None:
        entity_list = entities if isinstance(entities, list) else [
            {"entity": key, "value": value} for key, value in (entities or {}).items()
        ]
        tracker.update(
            UserUttered.create_external(intent_name, entity_list, tracker.get_latest_input_channel()), self.domain
        )
        await self._turn(intent_name, entity_list, tracker, output_channel)

    async def _turn(
        self, intent: Optional[str], entities: List[Dict[str, Any]], tracker: DialogueStateTracker, output: OutputChannel
    ) -> None:
        tracker.update_with_events(self._slot_events(intent, entities), self.domain)
        action = self.script.next_action(intent, tracker)
        if action != LISTEN:
            tracker.update(ActionExecuted(action), self.domain)
            message = await self.nlg.generate(action, tracker, nlg_output_channel(output.name()))
            if message is not None:
                message["utter_action"] = action
                utterance = create_bot_utterance(message)
                tracker.update(utterance, self.domain)
                await output.send_response(tracker.sender_id, utterance.message())
        tracker.update(ActionExecuted(LISTEN), self.domain)
        await self.tracker_store.save(tracker)

    def _slot_events(self, intent: Optional[str], entities: List[Dict[str, Any]]) -> List[SlotSet]:
        """The domain's ``from_entity`` and ``from_intent`` mappings, as ``action_extract_slots`` fills them."""
        values = {entity["entity"]: entity["value"] for entity in entities}
        events = []
        for name, slot in self.script.slots.items():
            for mapping in slot.get("mappings", []):
                wanted = mapping.get("intent")
                if wanted is not None and wanted != intent and intent not in (wanted if isinstance(wanted, list) else []):
                    continue
                if mapping.get("type") == "from_entity" and mapping.get("entity") in values:
                    events.append(SlotSet(name, values[mapping["entity"]]))
                    break
                if mapping.get("type") == "from_intent" and wanted is not None:
                    events.append(SlotSet(name, mapping.get("value")))
                    break
        return events


def pro_domain(written: Dict[str, Any]) -> Dict[str, Any]:
    """The demo's domain as Rasa Pro sees it: its ``language`` slot is Rasa
    Pro's built-in one, made from the config's languages (what Rasa Pro's
    ``LanguageImporter`` does; a domain may not declare it)."""
    slots = {name: slot for name, slot in written["slots"].items() if name != BUILTIN_LANGUAGE_SLOT}
    slots[BUILTIN_LANGUAGE_SLOT] = {
        "type": "strict_categorical", "initial_value": "en", "values": ["de", "en"], "mappings": [], "is_builtin": True,
    }
    return {**written, "slots": slots}


class DemoAssistant(Agent):
    """Rasa's ``Agent`` with the demo's domain and the scripted processor."""

    @classmethod
    def from_project(cls, root: Path, tracker_config: Any = None, **stores: Any) -> "DemoAssistant":
        from connectors.servicenow.rasa_glue.versions import TrackerStore

        written = yaml.safe_load((root / "domain.yml").read_text())
        domain = Domain.from_dict(pro_domain(written) if IS_RASA_PRO else written)
        if tracker_config is not None:
            stores["tracker_store"] = TrackerStore.create(tracker_config, domain=domain)
        agent = cls(domain=domain, **stores)
        script = DemoScript(
            yaml.safe_load((root / "data" / "nlu.yml").read_text()),
            yaml.safe_load((root / "data" / "rules.yml").read_text()),
            yaml.safe_load((root / "domain.yml").read_text()),
        )
        agent.processor = ScriptedProcessor(agent, script)  # type: ignore[assignment]
        return agent

    async def handle_message(self, message: UserMessage) -> Optional[List[Dict[str, Any]]]:
        # Rasa's own order: the conversation's lock, then the processor's turn.
        async with self.lock_store.lock(message.sender_id):
            return await self.processor.handle_message(message)  # type: ignore[union-attr]
