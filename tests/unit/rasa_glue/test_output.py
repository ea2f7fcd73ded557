"""A user's turn through Rasa (rasa_glue/output.py): what was said comes back
even when Rasa fails later in the turn; a turn Rasa could not lock the
conversation for never ran, and is answered as one to send again."""

import contextlib
from typing import Any, List

import pytest
from rasa.core.lock_store import LockError

from connectors.servicenow.errors import ConversationBusy, StoreUnavailable
from connectors.servicenow.payloads import UserPayload
from connectors.servicenow.rasa_glue.output import refused_lock, run_turn


def refusing_lock(agent: Any, monkeypatch: Any, error: Exception) -> List[str]:
    """Rasa's lock store raises ``error`` as it is asked for the lock."""
    asked: List[str] = []

    @contextlib.asynccontextmanager
    async def lock(conversation_id: str, *args: Any, **kwargs: Any):
        asked.append(conversation_id)
        raise error
        yield  # pragma: no cover - an async generator that never yields

    monkeypatch.setattr(agent.lock_store, "lock", lock)
    return asked


async def test_a_turn_whose_lock_store_fails_is_store_unavailable_and_never_reached_rasa(channel, agent, monkeypatch):
    # What the soak saw as Redis stopped: Rasa's ticket could not be issued.
    asked = refusing_lock(agent, monkeypatch, LockError("Error while acquiring lock. Error:\nError 111 connecting"))
    with pytest.raises(StoreUnavailable, match="lock store failed"):
        await channel.handle(UserPayload(sender="u1", message="hi"), agent.handle_message)
    assert asked == ["u1"]
    assert await agent.tracker_store.retrieve("u1") is None, "the turn never ran"


async def test_a_turn_whose_lock_another_turn_held_too_long_is_conversation_busy(channel, agent, monkeypatch):
    refusing_lock(agent, monkeypatch, LockError("Could not acquire lock for conversation_id 'u2'."))
    with pytest.raises(ConversationBusy):
        await channel.handle(UserPayload(sender="u2", message="hi"), agent.handle_message)


async def test_what_the_bot_said_before_a_failure_is_answered():
    async def says_then_fails(message: Any) -> None:
        await message.output_channel.send_text_message(message.sender_id, "Hello!")
        # A lock store failing in the clean-up after the turn: the LockError is only its context.
        try:
            raise LockError("Error while acquiring lock. Error:\nreset")
        except LockError:
            raise ConnectionError("reset by peer")

    collector = await run_turn(says_then_fails, "u3", "hi", "servicenow", None)
    assert [message["text"] for message in collector.messages] == ["Hello!"]


async def test_any_other_failure_of_rasa_is_logged_and_answers_what_was_said(caplog):
    async def fails(message: Any) -> None:
        raise ValueError("an action server answered nonsense")

    collector = await run_turn(fails, "u4", "hi", "servicenow", None)
    assert collector.messages == []
    assert "Rasa failed to handle a message of conversation u4." in caplog.text


def test_the_lock_error_is_found_behind_the_errors_it_caused():
    refused = LockError("Could not acquire lock for conversation_id 'u5'.")
    try:
        try:
            raise refused
        except LockError as error:
            raise ConnectionError("the clean-up failed too") from error
    except ConnectionError as outer:
        assert refused_lock(outer) is refused
    assert refused_lock(ValueError("nothing to do with a lock")) is None
