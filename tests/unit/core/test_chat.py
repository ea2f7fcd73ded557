"""The chats this process holds: one per sender, ended once."""

from connectors.servicenow.core.chat import ChatRegistry, LiveChat, OpensInFlight


def test_registry_ends_a_chat_once():
    registry = ChatRegistry()
    chat = registry.activate(LiveChat(sender_id="u1", chat_id="g1"))
    assert registry.activate(LiveChat(sender_id="u1", chat_id="other")) is chat
    assert registry.by_chat_id("g1") is chat
    assert registry.deactivate(chat) is True
    assert registry.deactivate(chat) is False
    assert registry.get("u1") is None and registry.by_chat_id("g1") is None and chat.ended


def test_a_cursor_keeps_the_newest_ids_and_the_latest_time():
    chat = LiveChat(sender_id="u1", chat_id="g1", last_updated=10)
    chat.note_message("a", 5)
    chat.note_message("b", 20)
    chat.note_message("a", 30)
    assert chat.cursor.last_updated == 30 and chat.cursor.seen_ids == ("b", "a")
    assert chat.record("connect").seen_ids == ("b", "a") and LiveChat.of(chat.record("connect")).last_updated == 30


def test_a_failed_open_covers_the_messages_sent_while_it_was_opening():
    opens = OpensInFlight()
    opens.failed("u1", asked_at=10.0, failed_at=12.0)
    assert opens.failed_for("u1", 11.0) and not opens.failed_for("u1", 12.0) and not opens.failed_for("u1", 9.0)
    assert not opens.failed_for("u2", 11.0)
