"""Handoff slots and the in-process registry."""

from pathlib import Path

from rasa.shared.core.domain import Domain
from rasa.shared.core.trackers import DialogueStateTracker

from connectors.servicenow.state import HANDOFF_SLOTS, HandoffRegistry, LiveChat, cleared_slot_events

DOMAIN = Domain.load(str(Path(__file__).resolve().parents[2] / "domain.yml"))


def tracker_with(events):
    tracker = DialogueStateTracker("u1", DOMAIN.slots)
    for event in events:
        tracker.update(event, DOMAIN)
    return tracker


def test_the_demo_domain_declares_every_handoff_slot():
    assert set(HANDOFF_SLOTS) <= {slot.name for slot in DOMAIN.slots}


def test_a_live_chat_round_trips_through_the_slots():
    chat = LiveChat(sender_id="u1", chat_id="g1", user="bot", last_updated=1234.0, seen_ids=("a", "b"))
    loaded = LiveChat.from_tracker(tracker_with(chat.slot_events()))
    assert (loaded.chat_id, loaded.user, loaded.last_updated, loaded.seen_ids) == ("g1", "bot", 1234.0, ("a", "b"))


def test_cleared_slots_mean_no_live_chat():
    chat = LiveChat(sender_id="u1", chat_id="g1")
    assert LiveChat.from_tracker(tracker_with(chat.slot_events() + cleared_slot_events())) is None


def test_a_flag_without_a_chat_id_is_ignored():
    events = LiveChat(sender_id="u1", chat_id="g1").slot_events()[:1]
    assert LiveChat.from_tracker(tracker_with(events)) is None


def test_registry_ends_a_chat_once_and_remembers_it_inactive():
    registry = HandoffRegistry()
    chat = registry.activate(LiveChat(sender_id="u1", chat_id="g1"))
    assert registry.activate(LiveChat(sender_id="u1", chat_id="other")) is chat
    assert registry.deactivate(chat) is True
    assert registry.deactivate(chat) is False
    assert registry.get("u1") is None and registry.known_inactive("u1")


def test_registry_forgets_the_least_recently_seen_inactive_users():
    registry = HandoffRegistry(inactive_capacity=2)
    for sender in ("a", "b"):
        registry.mark_inactive(sender)
    assert registry.known_inactive("a")  # a is now the most recent
    registry.mark_inactive("c")
    assert registry.known_inactive("a") and registry.known_inactive("c")
    assert not registry.known_inactive("b")


def test_a_store_error_is_logged_without_the_statement_and_its_parameters():
    import sqlalchemy.exc

    from connectors.servicenow.state import describe

    error = sqlalchemy.exc.OperationalError(
        "INSERT INTO events (data) VALUES (?)", ('{"text": "my password is hunter2"}',), Exception("disk I/O error")
    )
    assert describe(error) == "OperationalError: disk I/O error"
    assert describe(OSError("unable to open database file")) == "OSError: unable to open database file"
