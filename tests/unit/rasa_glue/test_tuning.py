"""The process-wide tuning the channel applies at start: the frozen startup
heap, and the event class cache, which must answer exactly as Rasa does."""

import gc

import pytest
from connectors.servicenow.rasa_glue.versions import InMemoryTrackerStore
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import ActionExecuted, BotUttered, Event, SlotSet, UserUttered
from rasa.shared.utils.common import all_subclasses

from connectors.servicenow.rasa_glue.tuning import (
    _RASA_RESOLVE_BY_TYPE,
    cache_event_class_lookup,
    freeze_startup_heap,
    uncache_event_class_lookup,
)


@pytest.fixture
def cached():
    assert cache_event_class_lookup()
    yield
    uncache_event_class_lookup()


def test_freezing_the_startup_heap_takes_what_is_alive_now_out_of_collections():
    startup = [[index] for index in range(100)]
    try:
        frozen = freeze_startup_heap()
        later = [[index] for index in range(100)]
        # Objects freed since by reference counting leave the count, so no equality here.
        assert frozen > len(startup) and gc.get_freeze_count() > len(startup)
        scanned = {id(item) for item in gc.get_objects()}
        assert id(startup) not in scanned and id(startup[0]) not in scanned
        assert id(later) in scanned and id(later[0]) in scanned
    finally:
        gc.unfreeze()


def test_every_event_name_resolves_to_the_class_rasa_finds(cached):
    names = {cls.type_name for cls in all_subclasses(Event)}
    assert {"user", "bot", "slot", "action"} <= names
    for name in names:
        assert Event.resolve_by_type(name) is _RASA_RESOLVE_BY_TYPE(name), name
        assert Event.resolve_by_type(name) is _RASA_RESOLVE_BY_TYPE(name), f"{name}, from the cache"


def test_names_rasa_does_not_know_are_answered_by_rasa_each_time(cached):
    assert Event.resolve_by_type("no-such-event", default=SlotSet) is SlotSet
    assert Event.resolve_by_type("topic", default=SlotSet) is None  # Rasa's legacy TopicSet
    with pytest.raises(ValueError, match="Unknown event name 'no-such-event'"):
        Event.resolve_by_type("no-such-event")
    # A default for one call is not remembered for the next.
    assert Event.resolve_by_type("no-such-event", default=BotUttered) is BotUttered


def test_an_event_class_defined_after_the_cache_is_found(cached):
    class LateEvent(SlotSet):
        type_name = "servicenow_test_late_event"

    assert Event.resolve_by_type("servicenow_test_late_event") is LateEvent


def test_the_cache_is_installed_once_and_can_be_taken_out():
    try:
        assert cache_event_class_lookup()
        assert not cache_event_class_lookup(), "two channels in one process install it once"
    finally:
        uncache_event_class_lookup()
    assert Event.resolve_by_type("bot") is BotUttered
    assert not hasattr(Event.__dict__["resolve_by_type"].__func__, "classes")


async def test_a_tracker_reads_back_the_same_with_the_cache(cached):
    domain = Domain.from_yaml("slots:\n  handoff_active:\n    type: bool\n    mappings: [{type: custom}]\n")
    store = InMemoryTrackerStore(domain)
    tracker = store.init_tracker("alice")
    for number in range(20):
        tracker.update(UserUttered(f"hello {number}", {"name": "greet", "confidence": 1.0}), domain)
        tracker.update(ActionExecuted("action_listen"), domain)
        tracker.update(BotUttered(f"agent {number}", metadata={"source": "agent"}), domain)
        tracker.update(SlotSet("handoff_active", number % 2 == 0), domain)
    await store.save(tracker)
    with_cache = await store.retrieve("alice")
    uncache_event_class_lookup()
    without = await store.retrieve("alice")
    assert list(with_cache.events) == list(without.events)
    assert with_cache.current_slot_values() == without.current_slot_values()
