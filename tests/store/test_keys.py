"""The names the core gives to state in a store: each prefix parses back to
its own kind only."""

from connectors.servicenow.store.keys import (
    callback_lease,
    chat_of_poll_lease,
    parse_timer_name,
    poll_lease,
    recipient_of_callback_lease,
    timer_name,
)


def test_timer_names():
    assert parse_timer_name(timer_name("idle", "abc:1")) == ("idle", "abc:1")
    assert parse_timer_name("poll:abc") is None
    assert parse_timer_name("idle:") is None


def test_lease_names():
    assert chat_of_poll_lease(poll_lease("abc")) == "abc"
    assert recipient_of_callback_lease(callback_lease("alice")) == "alice"
    assert chat_of_poll_lease(callback_lease("alice")) is None
    assert recipient_of_callback_lease(poll_lease("abc")) is None
