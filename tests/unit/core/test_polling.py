"""Polling Connect chats: the schedule, fast while active and slow once
quiet, with periodic session checks; ticks keep their cadence."""

from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.core.polling import PollSchedule, next_tick

SETTINGS = ServiceNowSettings.from_credentials(
    {
        "instance_url": "https://acme.service-now.com", "username": "u", "password": "p", "queue_id": "q",
        "poll_interval": 1, "idle_poll_interval": 10, "idle_after": 60, "session_check_interval": 30,
    }
)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_schedule_polls_fast_while_active_and_slow_once_quiet():
    clock = Clock()
    schedule = PollSchedule(SETTINGS, clock)
    assert schedule.delay() == 1
    clock.now += 61
    assert schedule.delay() == 10
    schedule.note_activity()
    assert schedule.delay() == 1


def test_schedule_checks_the_session_state_once_per_interval_of_quiet():
    clock = Clock()
    schedule = PollSchedule(SETTINGS, clock)
    checks = []
    for _ in range(90):  # 90 one-second ticks, nothing happening
        clock.now += 1
        checks.append(schedule.state_check_due())
    assert checks.count(True) == 3


def test_schedule_does_not_trade_polls_for_state_checks_while_messages_flow():
    clock = Clock()
    schedule = PollSchedule(SETTINGS, clock)
    checks = []
    for tick in range(90):
        clock.now += 1
        if tick % 10 == 0:
            schedule.note_activity()  # a message every ten seconds
        checks.append(schedule.state_check_due())
    assert checks.count(True) == 0


def test_a_late_tick_does_not_push_the_following_ones_later():
    # Due at 10.0, started 30 ms late: the next is still due at 11.0, so the
    # chat is polled once per second on average, not once per 1.03 s.
    assert next_tick(previous=9.0, interval=1.0, now=10.03) == 10.0
    assert next_tick(previous=10.0, interval=1.0, now=11.0) == 11.0


def test_after_a_stall_the_cadence_restarts_instead_of_catching_up():
    # Three intervals behind: no burst of make-up polls, the next is due a whole interval from now.
    assert next_tick(previous=5.0, interval=1.0, now=9.0) == 9.0


