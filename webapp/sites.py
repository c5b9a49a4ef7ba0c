"""Site creation: one place for the API, the UI and the CLI."""
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from sqlalchemy.exc import IntegrityError

from .errors import BadRequest, Conflict
from .extensions import db
from .models import AutomationConfig, Site
from .validation import DOMAIN_MAX, is_domain


# The zones a site may have: the IANA names this machine knows (the API document lists them).
ZONES = sorted(z for z in available_timezones() if len(z) <= 64)
_ZONE_SET = frozenset(ZONES)


def validate_timezone(tz):
    if not isinstance(tz, str) or not tz or len(tz) > 64 or ".." in tz or tz.startswith("/"):
        raise BadRequest(errors={"timezone": "must be an IANA time zone such as Europe/Berlin"})
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadRequest(errors={"timezone": f"{tz[:64]!r} is not a known IANA time zone"})
    if tz not in _ZONE_SET:  # e.g. "posixrules": a file in the database, not a zone name
        raise BadRequest(errors={"timezone": f"{tz[:64]!r} is not a known IANA time zone"})
    return tz


def domain_problem(domain):
    """Why `domain` is not a site domain (None, "" and a host name such as blog.example.com are),
    or None. Forms strip what was typed before asking; the API takes the value as sent."""
    if domain is None or domain == "":
        return None
    if not isinstance(domain, str) or len(domain) > DOMAIN_MAX:
        return f"must be a string of at most {DOMAIN_MAX} characters"
    if not is_domain(domain):
        return "must be a domain name such as blog.example.com"
    return None


def create_site(account_id, name, domain=None, timezone="UTC"):
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 120:
        raise BadRequest(errors={"name": "must be 1-120 characters"})
    problem = domain_problem(domain)
    if problem:
        raise BadRequest(errors={"domain": problem})
    site = Site(account_id=account_id, name=name.strip(), domain=domain or None,
                timezone=validate_timezone(timezone or "UTC"))
    db.session.add(site)
    try:
        db.session.flush()
    except IntegrityError:
        db.session.rollback()
        raise Conflict(errors={"name": f"a site named {name.strip()!r} already exists in this account"})
    db.session.add(AutomationConfig(account_id=account_id, site_id=site.id))
    db.session.commit()
    return site
