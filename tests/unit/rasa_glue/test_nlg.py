"""What the channel says: a domain response ``utter_servicenow_<name>`` through
Rasa's NLG (templated, or a custom NLG server on loopback), else the
``messages`` option, else the built-in default; placeholders in all three."""

import asyncio
import dataclasses
import logging
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import pytest
from aiohttp import web
from rasa.core.nlg import CallbackNaturalLanguageGenerator, NaturalLanguageGenerator, TemplatedNaturalLanguageGenerator
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import SlotSet
from rasa.utils.endpoints import EndpointConfig

from connectors.servicenow.rasa_glue.nlg import Line, Speech, fill
from connectors.servicenow.rasa_glue.versions import BUILTIN_LANGUAGE_SLOT, InMemoryTrackerStore
from connectors.servicenow.texts import UserTexts, response_name, text_names

# Rasa Pro's `language` is its built-in slot (strict_categorical, from the
# config's languages); Rasa 3.6 takes any slot of that name.
LANGUAGE_SLOT = (
    "{type: strict_categorical, values: [de, en], mappings: [], is_builtin: true}"
    if BUILTIN_LANGUAGE_SLOT
    else "{type: text, influence_conversation: false, mappings: [{type: custom}]}"
)
DOMAIN_YAML = """
version: "3.1"
slots:
  language: LANGUAGE_SLOT
responses:
  utter_servicenow_agent_closed:
    - text: "The agent is gone."
    - condition: [{type: slot, name: language, value: de}]
      text: "Der Mitarbeiter ist weg."
  utter_servicenow_connecting:
    - condition: [{type: slot, name: language, value: de}]
      text: "Ich verbinde Sie."
      buttons:
        - {title: "Abbrechen", payload: "/end_chat"}
  utter_servicenow_connection_lost:
    - text: "Lost chat {chat_id} at {last_message_at} ({language})."
""".replace("LANGUAGE_SLOT", LANGUAGE_SLOT)


def domain() -> Domain:
    return Domain.from_yaml(DOMAIN_YAML)


class SpyStore(InMemoryTrackerStore):
    def __init__(self, domain: Domain) -> None:
        super().__init__(domain)
        self.reads = 0

    async def retrieve(self, sender_id: str):  # type: ignore[override]
        self.reads += 1
        return await super().retrieve(sender_id)


async def agent_with(nlg: Optional[NaturalLanguageGenerator] = None, language: Optional[str] = None) -> Any:
    the_domain = domain()
    store = SpyStore(the_domain)
    if language is not None:
        tracker = store.init_tracker("u1")
        tracker.update(SlotSet("language", language))
        await store.save(tracker)
    store.reads = 0
    nlg = nlg if nlg is not None else TemplatedNaturalLanguageGenerator(the_domain.responses)
    return SimpleNamespace(nlg=nlg, domain=the_domain, tracker_store=store)


def texts_of(messages: List[Dict[str, Any]]) -> List[str]:
    return [message["text"] for message in messages]


async def test_a_domain_response_is_said_with_the_variation_its_slot_condition_picks():
    german = await agent_with(language="de")
    english = await agent_with(language="en")
    assert texts_of(await Speech(UserTexts(), lambda: german).say("u1", "agent_closed")) == ["Der Mitarbeiter ist weg."]
    assert texts_of(await Speech(UserTexts(), lambda: english).say("u1", "agent_closed")) == ["The agent is gone."]


async def test_a_rendered_message_keeps_its_buttons_and_names_its_response():
    agent = await agent_with(language="de")
    (message,) = await Speech(UserTexts(), lambda: agent).say("u1", "connecting")
    assert message == {
        "recipient_id": "u1",
        "text": "Ich verbinde Sie.",
        "buttons": [{"title": "Abbrechen", "payload": "/end_chat"}],
        "metadata": {"source": "bot", "utter_action": "utter_servicenow_connecting"},
    }


async def test_with_no_fitting_variation_the_messages_option_then_the_default_is_said():
    agent = await agent_with(language="en")  # connecting has only a German variation
    configured = UserTexts.from_options({"connecting": "One moment, please."})
    assert texts_of(await Speech(configured, lambda: agent).say("u1", "connecting")) == ["One moment, please."]
    assert texts_of(await Speech(UserTexts(), lambda: agent).say("u1", "connecting")) == [UserTexts().connecting]


async def test_the_domain_wins_over_the_messages_option():
    agent = await agent_with(language="en")
    configured = UserTexts.from_options({"agent_closed": "Bye from the agent."})
    assert texts_of(await Speech(configured, lambda: agent).say("u1", "agent_closed")) == ["The agent is gone."]


async def test_placeholders_fill_domain_responses_together_with_slots():
    agent = await agent_with(language="de")
    speech = Speech(UserTexts(), lambda: agent)
    messages = await speech.say("u1", "connection_lost", chat_id="C7", last_message_at="12:00")
    assert texts_of(messages) == ["Lost chat C7 at 12:00 (de)."]


async def test_placeholders_fill_the_messages_option_and_the_default():
    options = {"message_not_delivered": "Not delivered to chat {chat_id}; {unknown} stays as written."}
    speech = Speech(UserTexts.from_options(options), lambda: None)
    lines = [
        Line("message_not_delivered", {"chat_id": "C7"}),
        Line("connection_lost", {"chat_id": "C7", "last_message_at": "12:00"}),
    ]
    assert texts_of(await speech.say_lines("u1", lines)) == [
        "Not delivered to chat C7; {unknown} stays as written.",
        UserTexts().connection_lost.format(chat_id="C7", last_message_at="12:00"),
    ]


async def test_a_value_that_could_form_markdown_marks_the_text_as_plain():
    """A value from outside (ServiceNow's wait time, a user's file name) that
    could make a link in a frontend's Markdown: the text says so (issue 22)."""
    domain_agent = await agent_with(language="de")
    for speech in (Speech(UserTexts(), lambda: None), Speech(UserTexts(), lambda: domain_agent)):
        [plain] = await speech.say("u1", "connection_lost", chat_id="C7", last_message_at="12:00")
        assert "markdown" not in plain["metadata"]
        for value in ("[z]: javascript:alert(1)", "<img src=x>", "a\n\n[z]", "x\\y"):
            [marked] = await speech.say("u1", "connection_lost", chat_id=value, last_message_at="12:00")
            assert marked["metadata"]["markdown"] is False, value


def test_fill_says_a_template_it_cannot_read_as_written():
    assert fill("Queue position {position}.", {"position": 3}) == "Queue position 3."
    assert fill("a { stray brace", {"chat_id": "C7"}) == "a { stray brace"
    assert fill("{0} {.x}", {}) == "{0} {.x}"


async def test_without_a_domain_response_the_tracker_is_not_read():
    agent = await agent_with(language="de")
    messages = await Speech(UserTexts(), lambda: agent).say("u1", "handoff_busy")
    assert texts_of(messages) == [UserTexts().handoff_busy]
    assert messages[0]["metadata"] == {"source": "bot"}
    configured = UserTexts.from_options({"handoff_busy": "Everyone is busy."})
    assert texts_of(await Speech(configured, lambda: agent).say("u1", "handoff_busy")) == ["Everyone is busy."]
    assert agent.tracker_store.reads == 0


async def test_several_lines_read_the_tracker_once():
    agent = await agent_with(language="de")
    messages = await Speech(UserTexts(), lambda: agent).say_lines("u1", ["agent_closed", "connecting", "chat_ended"])
    assert texts_of(messages) == ["Der Mitarbeiter ist weg.", "Ich verbinde Sie.", UserTexts().chat_ended]
    assert agent.tracker_store.reads == 1


async def test_before_the_agent_is_loaded_the_configured_texts_are_said():
    assert texts_of(await Speech(UserTexts(), lambda: None).say("u1", "agent_closed")) == [UserTexts().agent_closed]


async def test_a_conversation_without_a_tracker_gets_the_unconditional_variation():
    agent = await agent_with()
    assert texts_of(await Speech(UserTexts(), lambda: agent).say("nobody", "agent_closed")) == ["The agent is gone."]


class BrokenNLG(NaturalLanguageGenerator):
    async def generate(self, utter_action, tracker, output_channel, **kwargs):
        raise RuntimeError("secret body that must not be logged")


class SlowNLG(NaturalLanguageGenerator):
    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def generate(self, utter_action, tracker, output_channel, **kwargs):
        await self.release.wait()
        return {"text": "too late"}


async def test_a_failing_nlg_falls_back_with_a_warning_without_the_body(caplog):
    agent = await agent_with(BrokenNLG(), language="de")
    speech = Speech(UserTexts(), lambda: agent)
    with caplog.at_level(logging.WARNING, logger="connectors.servicenow.rasa_glue.nlg"):
        assert texts_of(await speech.say("u1", "agent_closed")) == [UserTexts().agent_closed]
        assert texts_of(await speech.say("u1", "agent_closed")) == [UserTexts().agent_closed]
    warnings = [record.getMessage() for record in caplog.records if record.name == "connectors.servicenow.rasa_glue.nlg"]
    assert len(warnings) == 1  # once a minute per name, not once per notice
    assert "utter_servicenow_agent_closed" in warnings[0] and "RuntimeError" in warnings[0]
    assert "secret" not in caplog.text


async def test_a_slow_nlg_falls_back_within_the_timeout():
    slow = SlowNLG()
    agent = await agent_with(slow, language="de")
    speech = Speech(UserTexts(), lambda: agent, timeout_s=0.05)
    started = asyncio.get_running_loop().time()
    assert texts_of(await speech.say("u1", "agent_closed")) == [UserTexts().agent_closed]
    assert asyncio.get_running_loop().time() - started < 1.0
    slow.release.set()


async def test_a_failing_tracker_store_renders_without_the_tracker():
    agent = await agent_with(language="de")

    async def broken(_sender_id):
        raise OSError("unable to open database file")

    agent.tracker_store.retrieve = broken
    assert texts_of(await Speech(UserTexts(), lambda: agent).say("u1", "agent_closed")) == ["The agent is gone."]


def test_every_field_of_user_texts_is_a_text_name():
    assert text_names() == [item.name for item in dataclasses.fields(UserTexts)]
    assert response_name("agent_closed") == "utter_servicenow_agent_closed"


async def test_a_field_added_to_user_texts_is_said_from_its_domain_response_at_once():
    @dataclasses.dataclass(frozen=True)
    class MoreTexts(UserTexts):
        waiting: str = "Still waiting: you are number {position}."

    the_domain = Domain.from_yaml(DOMAIN_YAML + """
  utter_servicenow_waiting:
    - text: "Du bist Nummer {position}."
""")
    store = InMemoryTrackerStore(the_domain)
    agent = SimpleNamespace(nlg=TemplatedNaturalLanguageGenerator(the_domain.responses), domain=the_domain, tracker_store=store)
    assert texts_of(await Speech(MoreTexts(), lambda: agent).say("u1", "waiting", position=2)) == ["Du bist Nummer 2."]
    assert texts_of(await Speech(MoreTexts(), lambda: None).say("u1", "waiting", position=2)) == [
        "Still waiting: you are number 2."
    ]


async def test_an_unknown_text_name_is_a_programming_error():
    with pytest.raises(ValueError):
        await Speech(UserTexts(), lambda: None).say("u1", "agent_closd")


# -- a custom NLG server (endpoints.yml ``nlg: url``) on loopback ------------------


@pytest.fixture
async def nlg_server():
    """Answers German for utter_servicenow_agent_closed, {} (nothing) for other
    names it does not know, and 500 for utter_servicenow_chat_ended."""
    bodies: List[Dict[str, Any]] = []

    async def generate(request: web.Request) -> web.Response:
        body = await request.json()
        bodies.append(body)
        if body["response"] == "utter_servicenow_chat_ended":
            return web.Response(status=500)
        if body["response"] == "utter_servicenow_connection_lost":
            arguments = body["arguments"]
            return web.json_response({"text": f"Verbindung weg: {arguments['chat_id']}", "image": "https://x/i.png"})
        if body["response"] == "utter_servicenow_agent_closed":
            language = body["tracker"]["slots"].get("language")
            return web.json_response({"text": "Tschüss." if language == "de" else "Bye."})
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/nlg", generate)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/nlg", bodies
    await runner.cleanup()


async def test_a_custom_nlg_server_renders_with_the_tracker_and_the_placeholders(nlg_server):
    url, bodies = nlg_server
    agent = await agent_with(CallbackNaturalLanguageGenerator(EndpointConfig(url)), language="de")
    speech = Speech(UserTexts(), lambda: agent)
    assert texts_of(await speech.say("u1", "agent_closed")) == ["Tschüss."]
    (message,) = await speech.say("u1", "connection_lost", chat_id="C7", last_message_at="12:00")
    assert message["text"] == "Verbindung weg: C7" and message["image"] == "https://x/i.png"
    assert bodies[-1]["arguments"] == {"chat_id": "C7", "last_message_at": "12:00"}
    assert bodies[-1]["channel"] == {"name": "servicenow"}


async def test_a_custom_nlg_server_that_says_nothing_or_fails_gets_the_configured_text(nlg_server):
    url, bodies = nlg_server
    agent = await agent_with(CallbackNaturalLanguageGenerator(EndpointConfig(url)), language="de")
    configured = UserTexts.from_options({"handoff_busy": "Busy, sorry."})
    speech = Speech(configured, lambda: agent)
    assert texts_of(await speech.say_lines("u1", ["handoff_busy", "chat_ended", "agent_closed"])) == [
        "Busy, sorry.", UserTexts().chat_ended, "Tschüss.",
    ]
    # A custom NLG cannot be asked whether it knows a name: every one is asked.
    assert [body["response"] for body in bodies] == [
        "utter_servicenow_handoff_busy", "utter_servicenow_chat_ended", "utter_servicenow_agent_closed",
    ]
