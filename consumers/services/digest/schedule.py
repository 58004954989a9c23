"""When the digest goes out: once a day at `digest.time` (local time), weekly users on `digest.weekday`.

The times are wall-clock times of the machine's time zone. A naive local datetime is what
`datetime.now()` gives; `seconds_until` turns one into a wait through POSIX timestamps, so a day
with a daylight-saving change still sends at 07:00 on the clock, not an hour off.
"""
from __future__ import annotations

import re
import time as clock
from datetime import date, datetime, time, timedelta

from pipeline.quarantine_settings import WEEKDAYS  # date.weekday() order
from pipeline.settings import ConfigError

__all__ = ["parse_time_of_day", "parse_weekday", "next_run", "is_due", "seconds_until"]


def parse_time_of_day(text: str) -> time:
    """"07:00" (or "7:00") as a time of day; ConfigError naming `digest.time` otherwise."""
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
    if match and int(match.group(1)) < 24 and int(match.group(2)) < 60:
        return time(int(match.group(1)), int(match.group(2)))
    raise ConfigError(f"digest.time: expected a time of day such as 07:00, got {text!r}")


def parse_weekday(text: str) -> int:
    """"mon" … "sun" as date.weekday() counts them."""
    word = text.strip().lower()
    if word not in WEEKDAYS:
        raise ConfigError(f"digest.weekday: expected one of {', '.join(WEEKDAYS)}, got {text!r}")
    return WEEKDAYS.index(word)


def next_run(now: datetime, at: time) -> datetime:
    """The first local time `at` strictly after `now` (both naive local times)."""
    today = datetime.combine(now.date(), at)
    return today if today > now else datetime.combine(now.date() + timedelta(days=1), at)


def is_due(frequency: str, day: date, weekday: int) -> bool:
    """Whether a user with this digest frequency gets a digest in the scheduled run of `day`."""
    if frequency == "daily":
        return True
    if frequency == "weekly":
        return day.weekday() == weekday
    return False  # "off", or anything newer this release does not know


def seconds_until(when: datetime, now: float | None = None) -> float:
    """Seconds from `now` (a POSIX time, default the present) until the naive local time `when`."""
    return max(0.0, when.timestamp() - (clock.time() if now is None else now))
