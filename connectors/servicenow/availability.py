"""Business hours: whether a handoff may open now, and when it may next.

The ``business_hours`` option of ``credentials.yml``::

    business_hours:
      timezone: Europe/Berlin          # an IANA name (zoneinfo)
      mon: "09:00-17:00"
      tue: "09:00-12:00, 13:00-17:00"  # several spans a day
      sat: closed                      # or leave the day out
      closed_dates: ["2026-12-24", "2026-12-25"]

Times are wall-clock times in ``timezone``, so a span keeps its hours across
daylight-saving changes. ``24:00`` ends a span at midnight. Outside every span
no chat is opened (``core/opening.py`` refuses with ``outside_hours``).
"""

import datetime
import re
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Mapping, Optional, Tuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: How far ahead ``next_opening`` looks (closed dates can stack up).
LOOKAHEAD_DAYS = 400

_SPAN = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")

#: Minutes since midnight, [start, end).
Span = Tuple[int, int]


@dataclass(frozen=True)
class BusinessHours:
    timezone: str
    #: Spans per weekday, Monday first; an empty tuple is a closed day.
    weekly: Tuple[Tuple[Span, ...], ...]
    closed_dates: FrozenSet[datetime.date] = frozenset()

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def is_open(self, now: datetime.datetime) -> bool:
        local = now.astimezone(self.zone)
        if local.date() in self.closed_dates:
            return False
        minute = local.hour * 60 + local.minute
        return any(start <= minute < end for start, end in self.weekly[local.weekday()])

    def next_opening(self, now: datetime.datetime) -> Optional[datetime.datetime]:
        """The start of the next span after ``now`` (in the business time
        zone), or None when none comes within ``LOOKAHEAD_DAYS``."""
        local = now.astimezone(self.zone)
        minute = local.hour * 60 + local.minute
        for offset in range(LOOKAHEAD_DAYS):
            day = local.date() + datetime.timedelta(days=offset)
            if day in self.closed_dates:
                continue
            for start, _end in self.weekly[day.weekday()]:
                if offset == 0 and start <= minute:
                    continue
                return datetime.datetime.combine(day, datetime.time(start // 60, start % 60), tzinfo=self.zone)
        return None

    def describe_opening(self, now: datetime.datetime) -> str:
        """The next opening for a user: ``Monday 09:00 (Europe/Berlin)``."""
        opening = self.next_opening(now)
        if opening is None:
            return "a later date"
        return f"{opening.strftime('%A %H:%M')} ({self.timezone})"

    @classmethod
    def from_options(cls, options: Any) -> "BusinessHours":
        """Parse the option; ``ValueError`` says what is wrong."""
        if not isinstance(options, Mapping):
            raise ValueError("expected a mapping with 'timezone', weekdays (mon: \"09:00-17:00\") and 'closed_dates'")
        known = {"timezone", "closed_dates", *WEEKDAYS}
        unknown = sorted(str(key) for key in options if key not in known)
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)}; known: timezone, {', '.join(WEEKDAYS)}, closed_dates")
        timezone = options.get("timezone")
        if not isinstance(timezone, str) or not timezone.strip():
            raise ValueError("'timezone' is required, an IANA name such as Europe/Berlin or UTC")
        try:
            ZoneInfo(timezone.strip())
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"'{timezone}' is not a time zone name (e.g. Europe/Berlin, America/New_York, UTC)") from None
        weekly = tuple(_spans(day, options.get(day)) for day in WEEKDAYS)
        if not any(weekly):
            raise ValueError("no weekday has opening hours; give at least one, e.g. mon: \"09:00-17:00\"")
        return cls(timezone.strip(), weekly, _dates(options.get("closed_dates")))


def _spans(day: str, value: Any) -> Tuple[Span, ...]:
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("", "closed")):
        return ()
    parts = value.split(",") if isinstance(value, str) else value
    if not isinstance(parts, (list, tuple)):
        raise ValueError(f"'{day}' must be a text such as \"09:00-17:00\" (several: \"09:00-12:00, 13:00-17:00\") or closed")
    spans = []
    for part in parts:
        match = _SPAN.match(str(part))
        if match is None:
            raise ValueError(f"'{day}': '{str(part).strip()}' is not a span such as 09:00-17:00")
        hour1, min1, hour2, min2 = (int(group) for group in match.groups())
        start, end = hour1 * 60 + min1, hour2 * 60 + min2
        if hour1 > 23 or min1 > 59 or min2 > 59 or end > 24 * 60 or end <= start:
            raise ValueError(f"'{day}': '{str(part).strip()}' must run forward within one day (00:00 to 24:00)")
        spans.append((start, end))
    return tuple(sorted(spans))


def _dates(value: Any) -> FrozenSet[datetime.date]:
    if value is None:
        return frozenset()
    if not isinstance(value, (list, tuple)):
        raise ValueError("'closed_dates' must be a list of dates such as 2026-12-25")
    dates = set()
    for item in value:
        if isinstance(item, datetime.date):
            dates.add(item)  # YAML reads an unquoted 2026-12-25 as a date
            continue
        try:
            dates.add(datetime.date.fromisoformat(str(item).strip()))
        except ValueError:
            raise ValueError(f"'closed_dates': '{item}' is not a date such as 2026-12-25") from None
    return frozenset(dates)


def as_dict(hours: BusinessHours) -> Dict[str, Any]:
    """The option back as written (for the doctor and logs)."""
    def text(spans: Tuple[Span, ...]) -> str:
        return ", ".join(f"{s // 60:02d}:{s % 60:02d}-{e // 60:02d}:{e % 60:02d}" for s, e in spans) or "closed"

    data: Dict[str, Any] = {"timezone": hours.timezone}
    data.update({day: text(spans) for day, spans in zip(WEEKDAYS, hours.weekly)})
    data["closed_dates"] = sorted(date.isoformat() for date in hours.closed_dates)
    return data
