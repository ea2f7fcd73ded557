"""The hand-back turn and the handoff payloads of custom actions, with the demo
model loaded in process and ServiceNow mocked with aioresponses."""

import logging
from types import SimpleNamespace
from typing import Any, Dict, List

import pytest
from aioresponses import aioresponses
from rasa.core.actions.action import RemoteAction
import rasa.core.processor
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import UserUttered
from rasa.utils.endpoints import EndpointConfig
from rasa_sdk import Action
from rasa_sdk.executor import ActionExecutor, CollectingDispatcher

from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.core.ending import EndReason
from connectors.servicenow.errors import ConfigurationError
from connectors.servicenow.payloads import UserPayload
from connectors.servicenow.rasa_glue.handback import END_REASON_ENTITY, HandBackTurn
from connectors.servicenow.rasa_glue.output import TurnCollector
from connectors.servicenow.rasa_glue.slots import TrackerSlots, cleared_slot_events, ended_events, user_message_event
from connectors.servicenow.rasa_glue.versions import IS_RASA_PRO
from connectors.servicenow.retry import Pauses
from tests.unit.support import BASE, GROUP, LEAVE, SESSIONS, TEXTS, close, new_channel

ACTIONS = "http://actions.test/webhook"
MINIMAL = {"instance_url": BASE, "queue_id": "q", "username": "u", "password": "p"}


async def say(channel, agent, text, sender="u1"):
    return await channel.handle(UserPayload(sender=sender, message=text), agent.handle_message)


def hand_back_turns(tracker) -> List[UserUttered]:
    return [e for e in tracker.events if isinstance(e, UserUttered) and e.intent_name == "handoff_ended"]


# -- custom actions send the same payloads as responses ------------------------


class ActionHandOff(Action):
    def name(self) -> str:
        return "action_hand_off"

    async def run(self, dispatcher: CollectingDispatcher, tracker, domain) -> List[Dict[str, Any]]:
        dispatcher.utter_message(text="Let me find someone.")
        dispatcher.utter_message(json_message={"handoff": {"queue_id": "q2", "message": "VIP"}})
        return []


class ActionEndHandoff(Action):
    def name(self) -> str:
        return "action_end_handoff"

    async def run(self, dispatcher: CollectingDispatcher, tracker, domain) -> List[Dict[str, Any]]:
        dispatcher.utter_message(json_message={"handoff": {"end": True}})
        return []


# Rasa Pro keeps it on the shared base of its processors.
send_bot_messages = getattr(
    rasa.core.processor, "BaseMessageProcessor", rasa.core.processor.MessageProcessor
)._send_bot_messages


async def run_custom_action(agent, action: Action, output, sender="u1", mock=None):
    """A custom action as Rasa runs it: rasa_sdk's executor makes the action
    server's answer, Rasa's RemoteAction reads it, and the processor sends its
    messages to the output channel (``_send_bot_messages``)."""
    executor = ActionExecutor()
    executor.register_action(action)
    tracker = await agent.processor.fetch_tracker_and_update_session(sender, output)
    remote = RemoteAction(action.name(), EndpointConfig(ACTIONS))
    answer = await executor.run(
        {"next_action": action.name(), "sender_id": sender, "tracker": tracker.current_state(), "domain": agent.domain.as_dict(), "version": "3.6.2"}
    )
    if hasattr(answer, "model_dump"):  # rasa_sdk 3.21 answers with a pydantic model
        answer = answer.model_dump(by_alias=True)
    if mock is None:
        with aioresponses() as own:
            own.post(ACTIONS, payload=answer)
            events = await remote.run(output, agent.processor.nlg, tracker, agent.domain)
    else:
        mock.post(ACTIONS, payload=answer)
        events = await remote.run(output, agent.processor.nlg, tracker, agent.domain)
    await send_bot_messages(events, tracker, output)


async def test_a_custom_actions_json_message_is_the_handoff_payload(agent):
    collector = TurnCollector()
    await run_custom_action(agent, ActionHandOff(), collector)
    assert collector.handoff == {"queue_id": "q2", "message": "VIP"}
    assert collector.messages == [{"recipient_id": "u1", "text": "Let me find someone."}]


async def test_a_custom_action_ends_the_handoff_out_of_band(channel, agent):
    with aioresponses() as mock:
        mock.post(SESSIONS, payload={"result": {"group": GROUP, "state": 1}})
        await say(channel, agent, "talk to live agent")
        assert channel.core.registry.get("u1") is not None
        mock.post(LEAVE, status=200, payload={})
        # As in a reminder or Rasa's HTTP API: the channel's own output channel.
        await run_custom_action(agent, ActionEndHandoff(), channel.get_output_channel(), mock=mock)
        [ending] = list(channel.core.work)
        await ending

    assert channel.core.registry.get("u1") is None
    tracker = await agent.tracker_store.retrieve("u1")
    assert tracker.get_slot("handoff_active") is False
    assert tracker.get_slot("handoff_end_reason") == EndReason.BOT_ENDED.value
    [turn] = hand_back_turns(tracker)
    assert turn.entities == [{"entity": END_REASON_ENTITY, "value": "bot_ended"}]


async def test_an_end_payload_outside_a_handoff_changes_nothing(channel, agent):
    collector = TurnCollector()
    await run_custom_action(agent, ActionEndHandoff(), collector)
    assert collector.handoff is None and collector.messages == []


# -- the turn itself -------------------------------------------------------------


async def test_the_user_ending_takes_the_turn_under_the_answer(channel, agent):
    with aioresponses() as mock:
        mock.post(SESSIONS, payload={"result": {"group": GROUP, "state": 1}})
        await say(channel, agent, "talk to live agent")
        mock.post(LEAVE, status=200, payload={})
        replies = await say(channel, agent, "/end_chat")

    assert [reply["text"] for reply in replies] == [TEXTS.user_ended]
    tracker = await agent.tracker_store.retrieve("u1")
    [turn] = hand_back_turns(tracker)
    assert turn.entities == [{"entity": END_REASON_ENTITY, "value": "user_ended"}]
    assert tracker.get_slot("handoff_status") == "ended"
    # The rules still predict: after the hand-back turn the bot listens, and greets.
    assert tracker.latest_action_name == "action_listen"
    assert (await say(channel, agent, "hi"))[0]["text"].startswith("Hello!")


async def test_a_bot_without_the_intent_keeps_working_and_says_so_once(agent, caplog, demo_model):
    # The demo's domain without the hand-back intent (a bot written before it).
    domain_dict = agent.domain.as_dict()
    domain_dict["intents"] = [i for i in domain_dict["intents"] if (i if isinstance(i, str) else next(iter(i))) != "handoff_ended"]
    older = Domain.from_dict(domain_dict)
    assert "handoff_ended" not in older.intents
    fake = SimpleNamespace(domain=older)
    turn = HandBackTurn(lambda: fake)
    with caplog.at_level(logging.INFO, logger="connectors.servicenow.rasa_glue.handback"):
        assert turn.enabled(fake) is False
        assert turn.enabled(fake) is False
    assert sum("no intent 'handoff_ended'" in record.getMessage() for record in caplog.records) == 1
    assert turn.enabled(agent) is True  # the demo has it


async def test_without_the_intent_an_end_runs_no_turn(agent):
    channel = new_channel(agent, handback_intent="not_in_the_domain")
    try:
        with aioresponses() as mock:
            mock.post(SESSIONS, payload={"result": {"group": GROUP, "state": 1}})
            await say(channel, agent, "talk to live agent", sender="u2")
            mock.post(LEAVE, status=200, payload={})
            replies = await say(channel, agent, "/end_chat", sender="u2")
        assert [reply["text"] for reply in replies] == [TEXTS.user_ended]
        tracker = await agent.tracker_store.retrieve("u2")
        assert hand_back_turns(tracker) == []
        assert tracker.get_slot("handoff_end_reason") == "user_ended"  # the tracker still shows why
        assert (await say(channel, agent, "hi", sender="u2"))[0]["text"].startswith("Hello!")
    finally:
        await close(channel)


async def test_hand_back_can_be_called_with_any_reason(channel, agent):
    """The entry point for ends without a chat (a refusal, business hours)."""
    replies = await channel.core.handback.run("u3", "outside_hours", in_request=True)
    assert replies == []  # the demo's rule for other reasons listens
    tracker = await agent.tracker_store.retrieve("u3")
    [turn] = hand_back_turns(tracker)
    assert turn.entities == [{"entity": END_REASON_ENTITY, "value": "outside_hours"}]
    assert tracker.get_slot("handoff_end_reason") == "outside_hours"


async def test_the_agent_closing_asks_for_a_rating_out_of_band(channel, agent):
    replies = await channel.core.handback.run("u4", EndReason.AGENT_CLOSED.value, in_request=True)
    assert [reply["text"] for reply in replies] == ["How was your chat with the agent?"]


def test_a_recorded_user_message_has_no_intent():
    event = user_message_event("hi", "chat-1")
    assert event.intent_name is None and event.text == "hi"
    assert event.metadata == {"source": "user", "handoff": {"chat_id": "chat-1"}}


@pytest.mark.parametrize("value", ["", "/handoff_ended", "handoff ended", "a{b}"])
def test_handback_intent_must_name_one_intent(value):
    with pytest.raises(ConfigurationError, match="handback_intent"):
        ServiceNowSettings.from_credentials({**MINIMAL, "handback_intent": value or " x y"})


def test_the_new_options_have_their_defaults():
    settings = ServiceNowSettings.from_credentials(MINIMAL)
    assert settings.handback_intent == "handoff_ended" and settings.record_user_messages is False


async def test_the_optional_slots_are_written_only_when_the_domain_declares_them(caplog):
    from rasa.core.lock_store import InMemoryLockStore
    from connectors.servicenow.rasa_glue.versions import InMemoryTrackerStore

    domain = Domain.from_dict(
        {"slots": {"handoff_active": {"type": "bool", "influence_conversation": False, "mappings": [{"type": "custom"}]}}}
    )
    store = InMemoryTrackerStore(domain)
    fake = SimpleNamespace(domain=domain, tracker_store=store, lock_store=InMemoryLockStore(), processor=None)
    with caplog.at_level(logging.ERROR):
        await TrackerSlots(lambda: fake, "connect").write("u1", cleared_slot_events()[:1] + ended_events("agent_closed"))
    tracker = await store.retrieve("u1")
    assert [(e.key, e.value) for e in tracker.events] == [("handoff_active", False)]
    assert not [r for r in caplog.records if "non existent slot" in r.getMessage()]


@pytest.mark.skipif(not IS_RASA_PRO, reason="CALM assistants are Rasa Pro's")
async def test_a_calm_assistant_gets_the_hand_back_as_an_intent_payload(channel, agent):
    # What Rasa Pro's processor reports for a model whose graph runs the FlowPolicy.
    agent.processor.is_calm_assistant = True
    replies = await channel.core.handback.run("u1", EndReason.AGENT_CLOSED.value, in_request=True)
    assert [reply["text"] for reply in replies] == ["How was your chat with the agent?"]
    tracker = await agent.tracker_store.retrieve("u1")
    assert tracker.latest_message.text == '/handoff_ended{"handoff_end_reason":"agent_closed"}'
    assert tracker.latest_message.intent["name"] == "handoff_ended"


async def test_the_agent_gets_no_hand_back_turn_as_the_users_history(channel, agent):
    """The next handoff's history (context for the agent) holds what the user
    and the bot said, not the turns the channel ran for the bot."""
    await say(channel, agent, "hi", sender="u5")
    await channel.core.handback.run("u5", EndReason.AGENT_CLOSED.value, in_request=True)
    if IS_RASA_PRO:  # and the payload a CALM assistant gets
        agent.processor.is_calm_assistant = True
        await channel.core.handback.run("u5", EndReason.USER_ENDED.value, in_request=True)
    texts = [text for text, _from_bot, _at in await TrackerSlots(lambda: agent, "connect").history("u5", 20)]
    assert texts[0] == "hi" and "How was your chat with the agent?" in texts
    assert not [text for text in texts if "handoff_ended" in text], texts


# -- a turn whose conversation cannot be taken yet ---------------------------------


def failing_lock(agent, monkeypatch, failures: int) -> List[int]:
    """The lock store refuses the first ``failures`` locks (Redis stopped)."""
    import contextlib

    from rasa.core.lock_store import LockError

    real_lock = agent.lock_store.lock
    refused: List[int] = []

    @contextlib.asynccontextmanager
    async def lock(conversation_id, *args, **kwargs):
        if len(refused) < failures:
            refused.append(1)
            raise LockError("Error while acquiring lock.")
        async with real_lock(conversation_id, *args, **kwargs) as held:
            yield held

    monkeypatch.setattr(agent.lock_store, "lock", lock)
    return refused


async def test_a_turn_out_of_band_that_cannot_take_its_conversation_tries_again(agent, monkeypatch):
    refused = failing_lock(agent, monkeypatch, failures=2)
    turn = HandBackTurn(lambda: agent, start_again=Pauses((0.0, 0.0)))
    output = TurnCollector()
    assert await turn.run("u5", EndReason.AGENT_CLOSED.value, output, patient=True)
    assert len(refused) == 2
    assert len(hand_back_turns(await agent.tracker_store.retrieve("u5"))) == 1
    assert [reply["text"] for reply in output.messages] == ["How was your chat with the agent?"]


async def test_a_turn_in_a_request_is_not_tried_again(agent, monkeypatch):
    refused = failing_lock(agent, monkeypatch, failures=1)
    turn = HandBackTurn(lambda: agent, start_again=Pauses((0.0,)))
    assert not await turn.run("u6", EndReason.AGENT_CLOSED.value, TurnCollector())
    assert len(refused) == 1
    assert await agent.tracker_store.retrieve("u6") is None


async def test_a_turn_is_given_up_after_its_pauses(agent, monkeypatch):
    refused = failing_lock(agent, monkeypatch, failures=10)
    turn = HandBackTurn(lambda: agent, start_again=Pauses((0.0, 0.0)))
    assert not await turn.run("u7", EndReason.AGENT_CLOSED.value, TurnCollector(), patient=True)
    assert len(refused) == 3  # the first try, then one after each pause


async def test_a_turn_that_started_is_never_run_again(agent, monkeypatch):
    real_trigger = agent.trigger_intent
    calls: List[str] = []

    async def trigger_then_fail(*args, **kwargs):
        calls.append("turn")
        await real_trigger(*args, **kwargs)
        raise ConnectionError("the lock store went away as the turn ended")

    monkeypatch.setattr(agent, "trigger_intent", trigger_then_fail)
    turn = HandBackTurn(lambda: agent, start_again=Pauses((0.0,)))
    output = TurnCollector()
    assert not await turn.run("u8", EndReason.AGENT_CLOSED.value, output, patient=True)
    assert calls == ["turn"]
    assert [reply["text"] for reply in output.messages] == ["How was your chat with the agent?"]


@pytest.mark.skipif(not IS_RASA_PRO, reason="CALM assistants are Rasa Pro's")
async def test_a_calm_turn_that_rasa_could_not_lock_is_tried_again(agent, monkeypatch):
    # Rasa Pro takes the lock inside handle_message; its LockError says the turn never ran.
    agent.processor.is_calm_assistant = True
    refused = failing_lock(agent, monkeypatch, failures=1)
    turn = HandBackTurn(lambda: agent, start_again=Pauses((0.0,)))
    output = TurnCollector()
    assert await turn.run("u9", EndReason.AGENT_CLOSED.value, output, patient=True)
    assert len(refused) == 1
    assert [reply["text"] for reply in output.messages] == ["How was your chat with the agent?"]
