"""The handoff slots: the store's durable mirror."""

from pathlib import Path

from rasa.shared.core.domain import Domain
from rasa.shared.core.trackers import DialogueStateTracker

from connectors.servicenow.rasa_glue.slots import (
    HANDOFF_SLOTS,
    cleared_slot_events,
    describe,
    handoff_slot_events,
    record_from_tracker,
)

DOMAIN = Domain.load(str(Path(__file__).resolve().parents[3] / "domain.yml"))


def tracker_with(events):
    tracker = DialogueStateTracker("u1", DOMAIN.slots)
    for event in events:
        tracker.update(event, DOMAIN)
    return tracker


def test_the_demo_domain_declares_every_handoff_slot():
    assert set(HANDOFF_SLOTS) <= {slot.name for slot in DOMAIN.slots}


def test_a_live_chat_round_trips_through_the_slots():
    loaded = record_from_tracker(tracker_with(handoff_slot_events("g1", "bot", 1234.0, ("a", "b"))), "connect")
    assert (loaded.chat_id, loaded.user, loaded.last_updated, loaded.seen_ids) == ("g1", "bot", 1234.0, ("a", "b"))
    assert (loaded.sender_id, loaded.api) == ("u1", "connect")


def test_cleared_slots_mean_no_live_chat():
    events = handoff_slot_events("g1", None, None, ()) + cleared_slot_events()
    assert record_from_tracker(tracker_with(events), "connect") is None


def test_a_flag_without_a_chat_id_is_ignored():
    events = handoff_slot_events("g1", None, None, ())[:1]
    assert record_from_tracker(tracker_with(events), "connect") is None


def test_a_store_error_is_logged_without_the_statement_and_its_parameters():
    import sqlalchemy.exc

    error = sqlalchemy.exc.OperationalError(
        "INSERT INTO events (data) VALUES (?)", ('{"text": "my password is hunter2"}',), Exception("disk I/O error")
    )
    assert describe(error) == "OperationalError: disk I/O error"
    assert describe(OSError("unable to open database file")) == "OSError: unable to open database file"
