"""Pure tests of the next-slot function: cadences, month ends, leap years, DST."""
from datetime import datetime, timedelta

import pytest

from webapp.automation.schedule import next_slot, next_slots


def utc(*a):
    return datetime(*a)


def test_daily_utc():
    assert next_slot(utc(2026, 5, 1, 1, 0), "daily", "02:00", "UTC") == utc(2026, 5, 1, 2, 0)
    assert next_slot(utc(2026, 5, 1, 2, 0), "daily", "02:00", "UTC") == utc(2026, 5, 2, 2, 0)  # strictly after
    assert next_slot(utc(2026, 12, 31, 23, 0), "daily", "02:00", "UTC") == utc(2027, 1, 1, 2, 0)


def test_daily_in_zone_is_stored_utc():
    # 09:00 in Berlin is 07:00 UTC in summer, 08:00 UTC in winter.
    assert next_slot(utc(2026, 7, 1), "daily", "09:00", "Europe/Berlin") == utc(2026, 7, 1, 7, 0)
    assert next_slot(utc(2026, 1, 1), "daily", "09:00", "Europe/Berlin") == utc(2026, 1, 1, 8, 0)
    # 23:30 New York on Jan 1 is 04:30 UTC on Jan 2.
    assert next_slot(utc(2026, 1, 1, 12), "daily", "23:30", "America/New_York") == utc(2026, 1, 2, 4, 30)


def test_weekly_same_weekday():
    # 2026-05-01 is a Friday (4). scheduled_day=0 -> Monday.
    assert next_slot(utc(2026, 5, 1), "weekly", "10:00", "UTC", 0) == utc(2026, 5, 4, 10, 0)
    slots = next_slots(utc(2026, 5, 1), "weekly", "10:00", "UTC", 4, n=3)
    assert slots == [utc(2026, 5, 1, 10), utc(2026, 5, 8, 10), utc(2026, 5, 15, 10)]


def test_monthly_clamps_to_month_end_and_leap_years():
    slots = next_slots(utc(2027, 1, 1), "monthly", "08:00", "UTC", 31, n=5)
    assert [s.date().isoformat() for s in slots] == ["2027-01-31", "2027-02-28", "2027-03-31", "2027-04-30", "2027-05-31"]
    leap = next_slots(utc(2028, 1, 31, 9), "monthly", "08:00", "UTC", 30, n=2)
    assert [s.date().isoformat() for s in leap] == ["2028-02-29", "2028-03-30"]
    assert next_slot(utc(2028, 2, 29, 8, 0), "monthly", "08:00", "UTC", 29) == utc(2028, 3, 29, 8)


@pytest.mark.parametrize("tz,gap_day,utc_hour", [("America/New_York", 8, 7), ("Europe/Berlin", 29, 1)])
def test_spring_forward_gap_runs_exactly_once(tz, gap_day, utc_hour):
    # 02:30 does not exist on the spring-forward day (NY: 2026-03-08, Berlin: 2026-03-29).
    month = 3
    day_before = utc(2026, month, gap_day - 1, 12)
    slots = next_slots(day_before, "daily", "02:30", tz, n=3)
    assert len(set(slots)) == 3
    # One slot on the gap day (shifted by the gap), then normal days: none skipped, none doubled.
    from zoneinfo import ZoneInfo
    from datetime import timezone
    local_days = [s.replace(tzinfo=timezone.utc).astimezone(ZoneInfo(tz)).day for s in slots]
    assert local_days == [gap_day, gap_day + 1, gap_day + 2]
    assert slots[0].hour == utc_hour and slots[0].minute == 30


@pytest.mark.parametrize("tz,day", [("America/New_York", 1), ("Europe/Berlin", 25)])
def test_fall_back_overlap_runs_once(tz, day):
    # 01:30 (NY, 2026-11-01) / 02:30 (Berlin, 2026-10-25) happen twice: run at the first only.
    hhmm = "01:30" if tz == "America/New_York" else "02:30"
    month = 11 if tz == "America/New_York" else 10
    first = next_slot(utc(2026, month, day, 0, 0) - timedelta(hours=12), "daily", hhmm, tz)
    second = next_slot(first, "daily", hhmm, tz)
    assert (second - first).total_seconds() == 25 * 3600  # the next day's slot, not the repeat an hour later
    expected_first = utc(2026, month, day, 5, 30) if tz == "America/New_York" else utc(2026, month, day, 0, 30)
    assert first == expected_first


def test_daily_across_dst_keeps_local_time():
    slots = next_slots(utc(2026, 3, 6), "daily", "09:00", "America/New_York", n=4)
    assert [s.hour for s in slots] == [14, 14, 13, 13]  # EST then EDT: always 09:00 local
