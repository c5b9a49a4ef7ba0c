"""One rule for times on every page: relative ("3 min ago", "in 2 h"), with the exact time in
the site's zone and in UTC on hover (`title`) and machine-readable in `datetime`; the browser
keeps the relative text fresh (static/js/insights.js). Schedules are shown in the site's zone
and say which zone it is.

Times come as naive UTC datetimes (the models) or ISO strings ending in Z (snapshots, JSON).
"""
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from markupsafe import Markup

from ..models.base import utcnow


def _dt(value):
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.rstrip("Z"))  # naive UTC as the models keep it
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def relative(dt, now=None):
    now = now or utcnow()
    secs = (now - dt).total_seconds()
    future, s = secs < 0, abs(secs)
    if s < 45:
        return "just now" if not future else "in a moment"
    if s < 90 * 60:
        text = f"{max(1, round(s / 60))} min"
    elif s < 36 * 3600:
        text = f"{round(s / 3600)} h"
    else:
        text = f"{round(s / 86400)} days"
    return f"in {text}" if future else f"{text} ago"


def zone_name(tz):
    return tz or "UTC"


def local(dt, tz, fmt="%Y-%m-%d %H:%M:%S"):
    """`dt` (naive UTC) in zone `tz`, with the zone's abbreviation (CET, EST, UTC)."""
    aware = dt.replace(tzinfo=timezone.utc).astimezone(ZoneInfo(zone_name(tz)))
    return f"{aware.strftime(fmt)} {aware.tzname()}"


def exact(dt, tz):
    """The hover text: the time in the site's zone and in UTC."""
    tz = zone_name(tz)
    utc = f"{dt:%Y-%m-%d %H:%M:%S} UTC"
    if tz == "UTC":
        return utc
    return f"{local(dt, tz)} ({tz}) · {utc}"


def when(value, tz="UTC", now=None):
    """<time> with relative text, exact times on hover."""
    dt = _dt(value)
    if dt is None:
        return Markup('<span class="muted">—</span>')
    return Markup('<time class="rel" datetime="{}" title="{}">{}</time>').format(
        dt.replace(microsecond=0).isoformat() + "Z", exact(dt, tz), relative(dt, now))


def scheduled(value, tz="UTC"):
    """A schedule slot: absolute, in the site's zone and naming it; UTC on hover."""
    dt = _dt(value)
    if dt is None:
        return Markup('<span class="muted">—</span>')
    return Markup('<time datetime="{}" title="{}">{} ({})</time>').format(
        dt.replace(microsecond=0).isoformat() + "Z", f"{dt:%Y-%m-%d %H:%M} UTC", local(dt, tz, "%a %d %b %H:%M"), zone_name(tz))


def seconds(value):
    """Durations: 12 s · 4 min 05 s · 2 h 03 min."""
    from ..automation.insights import fmt_seconds
    return fmt_seconds(value) if value is not None else ""


def since_seconds(value, now=None):
    """Seconds from an anchor until now (the server's first paint of a ticking figure)."""
    dt = _dt(value)
    return None if dt is None else max(0.0, ((now or utcnow()) - dt).total_seconds())


def until_seconds(value, now=None):
    dt = _dt(value)
    return None if dt is None else max(0.0, (dt - (now or utcnow())).total_seconds())


def init_app(app):
    app.jinja_env.globals.update(when=when, scheduled=scheduled)
    app.jinja_env.filters.update(seconds=seconds, since_seconds=since_seconds, until_seconds=until_seconds)
