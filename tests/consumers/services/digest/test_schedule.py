"""When digests go out: the next run, weekly users on their weekday, and the wait in seconds."""
from __future__ import annotations

from datetime import date, datetime, time, timedelta

import pytest

from consumers.services.digest.schedule import is_due, next_run, parse_time_of_day, parse_weekday, seconds_until
from pipeline.settings import ConfigError

SEVEN = time(7, 0)


@pytest.mark.parametrize("now, expected", [
    (datetime(2026, 12, 3, 6, 59, 59), datetime(2026, 12, 3, 7, 0)),  # later today
    (datetime(2026, 12, 3, 7, 0), datetime(2026, 12, 4, 7, 0)),  # the run of this very second is being made
    (datetime(2026, 12, 3, 23, 30), datetime(2026, 12, 4, 7, 0)),  # tomorrow
    (datetime(2026, 12, 31, 8, 0), datetime(2027, 1, 1, 7, 0)),  # over the year's end
])
def test_next_run(now, expected) -> None:
    assert next_run(now, SEVEN) == expected


def test_weekly_users_only_on_the_weekday_daily_always_off_never() -> None:
    monday = parse_weekday("mon")
    week = [date(2026, 11, 30) + timedelta(days=i) for i in range(7)]  # Mon 30 Nov .. Sun 6 Dec
    assert [d.weekday() for d in week] == list(range(7))
    assert [is_due("weekly", d, monday) for d in week] == [True] + [False] * 6
    assert all(is_due("daily", d, monday) for d in week)
    assert not any(is_due("off", d, monday) for d in week)
    assert [is_due("weekly", d, parse_weekday("fri")) for d in week].index(True) == 4


def test_times_and_weekdays_are_checked() -> None:
    assert parse_time_of_day("7:05") == time(7, 5)
    for bad in ("24:00", "07:60", "7", "seven"):
        with pytest.raises(ConfigError, match="digest.time"):
            parse_time_of_day(bad)
    with pytest.raises(ConfigError, match="digest.weekday"):
        parse_weekday("monday")


def test_seconds_until_counts_in_posix_time() -> None:
    when = datetime(2026, 12, 4, 7, 0)
    assert seconds_until(when, now=when.timestamp() - 90) == 90
    assert seconds_until(when, now=when.timestamp() + 5) == 0  # late: at once
