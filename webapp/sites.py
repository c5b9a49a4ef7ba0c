"""Site creation: one place for the API, the UI and the CLI."""
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.exc import IntegrityError

from .errors import BadRequest, Conflict
from .extensions import db
from .models import AutomationConfig, Site


def validate_timezone(tz):
    if not isinstance(tz, str) or not tz or len(tz) > 64 or ".." in tz or tz.startswith("/"):
        raise BadRequest(errors={"timezone": "must be an IANA time zone such as Europe/Berlin"})
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadRequest(errors={"timezone": f"{tz!r} is not a known IANA time zone"})
    return tz


def create_site(account_id, name, domain=None, timezone="UTC"):
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 120:
        raise BadRequest(errors={"name": "must be 1-120 characters"})
    if domain is not None and (not isinstance(domain, str) or len(domain) > 255):
        raise BadRequest(errors={"domain": "must be a string of at most 255 characters"})
    site = Site(account_id=account_id, name=name.strip(), domain=(domain or "").strip() or None,
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
