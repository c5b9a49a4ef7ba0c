"""Next scheduled slot: computed in the site's IANA zone, stored as naive UTC.

A local time that does not exist (spring-forward gap) resolves with fold=0, i.e. it runs
once, shifted by the gap; a local time that happens twice (fall-back) runs at its first
occurrence only. Monthly slots on the 29th-31st clamp to the month's last day.
"""
import calendar
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

FREQUENCIES = ("daily", "weekly", "monthly")


def _to_utc(d, hh, mm, tz):
    local = datetime.combine(d, time(hh, mm), tzinfo=tz)  # fold=0
    return local.astimezone(timezone.utc).replace(tzinfo=None)


def _clamp_day(year, month, day):
    return date(year, month, min(day, calendar.monthrange(year, month)[1]))


def _candidates(start, frequency, day):
    """Local dates on or after `start` that match the cadence, in order."""
    if frequency == "daily":
        d = start
        while True:
            yield d
            d += timedelta(days=1)
    elif frequency == "weekly":
        d = start + timedelta(days=(day - start.weekday()) % 7)
        while True:
            yield d
            d += timedelta(days=7)
    else:
        y, m = start.year, start.month
        while True:
            d = _clamp_day(y, m, day)
            if d >= start:
                yield d
            m += 1
            if m == 13:
                y, m = y + 1, 1


def default_day(frequency, now_utc, tzname):
    """The day a weekly/monthly schedule keeps when none is chosen: the day it was enabled."""
    local = now_utc.replace(tzinfo=timezone.utc).astimezone(ZoneInfo(tzname))
    return local.weekday() if frequency == "weekly" else local.day if frequency == "monthly" else None


def next_slot(after_utc, frequency, scheduled_time, tzname, day=None):
    """The first slot strictly after `after_utc` (naive UTC)."""
    tz = ZoneInfo(tzname)
    hh, mm = (int(x) for x in scheduled_time.split(":"))
    if day is None:
        day = default_day(frequency, after_utc, tzname)
    start = after_utc.replace(tzinfo=timezone.utc).astimezone(tz).date() - timedelta(days=1)
    for d in _candidates(start, frequency, day):
        slot = _to_utc(d, hh, mm, tz)
        if slot > after_utc:
            return slot


def next_slots(after_utc, frequency, scheduled_time, tzname, day=None, n=5):
    out, t = [], after_utc
    for _ in range(n):
        t = next_slot(t, frequency, scheduled_time, tzname, day)
        out.append(t)
    return out
