"""Business hours: parsing the option, open or closed at a moment, the next opening."""

import datetime
from zoneinfo import ZoneInfo

import pytest

from connectors.servicenow.availability import BusinessHours
from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.errors import ConfigurationError

BERLIN = ZoneInfo("Europe/Berlin")
HOURS = BusinessHours.from_options(
    {
        "timezone": "Europe/Berlin",
        "mon": "09:00-17:00",
        "tue": "09:00-12:00, 13:00-17:00",
        "wed": "09:00-17:00",
        "fri": "22:00-24:00",
        "sat": "closed",
        "closed_dates": ["2026-12-24", datetime.date(2026, 12, 25)],
    }
)


def at(year, month, day, hour, minute=0, zone=BERLIN) -> datetime.datetime:
    return datetime.datetime(year, month, day, hour, minute, tzinfo=zone)


@pytest.mark.parametrize(
    "moment, is_open",
    [
        (at(2026, 12, 7, 8, 59), False),  # Monday, before opening
        (at(2026, 12, 7, 9, 0), True),
        (at(2026, 12, 7, 16, 59), True),
        (at(2026, 12, 7, 17, 0), False),  # the end minute is closed
        (at(2026, 12, 8, 12, 30), False),  # Tuesday's lunch break
        (at(2026, 12, 8, 13, 0), True),
        (at(2026, 12, 10, 10, 0), False),  # Thursday is not listed
        (at(2026, 12, 11, 23, 59), True),  # until 24:00
        (at(2026, 12, 24, 10, 0), False),  # a Thursday, but a closed date anyway
        (at(2026, 12, 23, 10, 0), True),  # Wednesday
        # 08:30 UTC on a winter Monday is 09:30 in Berlin: the zone decides.
        (at(2026, 12, 7, 8, 30, zone=datetime.timezone.utc), True),
        # Summer time: 07:30 UTC is 09:30 CEST.
        (at(2026, 7, 6, 7, 30, zone=datetime.timezone.utc), True),
        (at(2026, 7, 6, 6, 30, zone=datetime.timezone.utc), False),
    ],
)
def test_open_or_closed(moment, is_open):
    assert HOURS.is_open(moment) is is_open


def test_the_next_opening_skips_breaks_closed_days_and_dates():
    assert HOURS.next_opening(at(2026, 12, 8, 12, 30)) == at(2026, 12, 8, 13, 0)
    assert HOURS.next_opening(at(2026, 12, 7, 17, 0)) == at(2026, 12, 8, 9, 0)
    assert HOURS.next_opening(at(2026, 12, 11, 23, 0)) == at(2026, 12, 14, 9, 0)  # Friday night to Monday
    # Wednesday 23 December after hours: Thursday is not listed, Friday the 25th is a closed date.
    assert HOURS.next_opening(at(2026, 12, 23, 18, 0)) == at(2026, 12, 28, 9, 0)
    assert HOURS.describe_opening(at(2026, 12, 7, 17, 0)) == "Tuesday 09:00 (Europe/Berlin)"


def test_closed_dates_are_skipped_for_the_next_opening():
    hours = BusinessHours.from_options({"timezone": "UTC", "mon": "09:00-17:00", "closed_dates": ["2026-12-07"]})
    # Monday the 7th is closed: the next opening is a week later.
    assert hours.next_opening(at(2026, 12, 6, 12, 0, zone=datetime.timezone.utc)) == datetime.datetime(
        2026, 12, 14, 9, 0, tzinfo=ZoneInfo("UTC")
    )


@pytest.mark.parametrize(
    "options, message",
    [
        ("9-5", "expected a mapping"),
        ({"mon": "09:00-17:00"}, "'timezone' is required"),
        ({"timezone": "Mars/Olympus", "mon": "09:00-17:00"}, "not a time zone name"),
        ({"timezone": "UTC", "mon": "9-17"}, "not a span such as 09:00-17:00"),
        ({"timezone": "UTC", "mon": "17:00-09:00"}, "must run forward"),
        ({"timezone": "UTC", "mon": "09:00-24:30"}, "must run forward"),
        ({"timezone": "UTC", "monday": "09:00-17:00"}, "unknown key(s) monday"),
        ({"timezone": "UTC"}, "no weekday has opening hours"),
        ({"timezone": "UTC", "mon": "09:00-17:00", "closed_dates": ["25.12.2026"]}, "not a date"),
        ({"timezone": "UTC", "mon": "09:00-17:00", "closed_dates": "2026-12-25"}, "must be a list"),
    ],
)
def test_a_bad_option_says_what_is_wrong(options, message):
    with pytest.raises(ConfigurationError, match="Invalid value for 'business_hours'") as raised:
        ServiceNowSettings.from_credentials(
            {"instance_url": "https://x.service-now.com", "username": "u", "password": "p", "queue_id": "q",
             "business_hours": options}
        )
    assert message in str(raised.value)


@pytest.mark.parametrize("name", ["agent_wait_timeout", "waiting_notice_interval", "user_idle_timeout"])
def test_timeouts_are_off_by_default_and_never_negative(name):
    base = {"instance_url": "https://x.service-now.com", "username": "u", "password": "p", "queue_id": "q"}
    assert getattr(ServiceNowSettings.from_credentials(base), name) == 0
    assert getattr(ServiceNowSettings.from_credentials({**base, name: "90"}), name) == 90
    with pytest.raises(ConfigurationError, match=name):
        ServiceNowSettings.from_credentials({**base, name: -1})
