"""Team, sites and access: users with roles, invitations, API tokens, site edit and delete.
One place for the API, the web pages and the CLI; every change is audited in its own
transaction (webapp/audit.py) and every lookup is scoped by the caller's account."""
import hashlib
import re
import secrets
from datetime import datetime, timedelta, timezone

from flask import current_app
from sqlalchemy import delete, func, select, update

from . import audit
from .access import RANK, ROLES, check_role
from .errors import BadRequest, NotFound
from .extensions import db
from .models import ACTIVE_STATUSES, ApiToken, AutomationRun, Site, User
from .models.base import iso, utcnow
from .sites import domain_problem, validate_timezone
from .validation import is_email

INVITE_TTL = timedelta(days=7)
TOKEN_SCOPES = ("full", "read")
MAX_NAME = 120


def _hash(raw):
    return hashlib.sha256(raw.encode()).hexdigest()


def actor_of(user):
    return f"user:{user.email}"


def validate_role(role):
    if role not in ROLES:
        raise BadRequest(f"'role' must be one of {', '.join(ROLES)}.")
    return role


def validate_email(email):
    if not isinstance(email, str) or not is_email(email.strip()):
        raise BadRequest("'email' must be an email address such as name@example.com.")
    return email.strip().lower()


def default_role(account_id):
    """The first user of an account owns it; everyone after starts as an operator."""
    exists = db.session.execute(select(User.id).where(User.account_id == account_id).limit(1)).first()
    return "operator" if exists else "owner"


def new_user(account_id, email, password=None, role=None):
    """A user row (not committed): the CLI, the demo, the tests and invitations share it."""
    email = validate_email(email)
    role = validate_role(role) if role else default_role(account_id)
    if db.session.execute(select(User.id).where(User.email == email)).first():
        raise BadRequest(f"'email': a user with email {email!r} already exists.")
    user = User(email=email, account_id=account_id, role=role)
    user.set_password(password or secrets.token_urlsafe(32))
    db.session.add(user)
    db.session.flush()
    return user


# -- users (owners only) ----------------------------------------------------------------------------
def account_users(account_id):
    return db.session.execute(select(User).where(User.account_id == account_id).order_by(User.id)).scalars().all()


def _member(actor_user, user_id):
    user = db.session.execute(select(User).where(User.id == user_id, User.account_id == actor_user.account_id)
                              ).scalar_one_or_none()
    if user is None:
        raise NotFound(f"User {user_id} not found.")
    return user


def invite(actor_user, email, role="operator"):
    """Create the user with a one-time set-password link; returns (user, raw link token)."""
    check_role(actor_user, "owner")
    email, role = validate_email(email), validate_role(role)
    taken = db.session.execute(select(User.account_id).where(User.email == email)).first()
    if taken is not None:
        if taken[0] == actor_user.account_id:
            raise BadRequest(f"'email': {email} is already a member of this account.")
        # An email belongs to one account. Saying so ("a user with email … already exists")
        # told any owner which addresses have accounts elsewhere; this says nothing about where.
        raise BadRequest("'email': this address cannot be invited. Ask the person for another address.")
    from .quotas import check_invitations
    check_invitations(actor_user.account_id)
    user = new_user(actor_user.account_id, email, role=role)
    raw = secrets.token_urlsafe(32)
    user.invite_hash = _hash(raw)
    user.invite_expires_at = utcnow() + INVITE_TTL
    audit.record(actor_user.account_id, actor_of(actor_user), "user.invite", target=user.email, role=role)
    db.session.commit()
    return user, raw


def invited_user(raw):
    if not raw or len(raw) > 100:
        return None
    user = db.session.execute(select(User).where(User.invite_hash == _hash(raw))).scalar_one_or_none()
    if user is None or not user.active or (user.invite_expires_at and user.invite_expires_at < utcnow()):
        return None
    return user


def accept_invite(raw, password):
    user = invited_user(raw)
    if user is None:
        raise NotFound("This invitation link is invalid, used or expired.")
    if not isinstance(password, str) or not 8 <= len(password) <= 255:
        raise BadRequest("'password' must be 8-255 characters.")
    user.set_password(password)
    user.invite_hash = None  # one time
    user.invite_expires_at = None
    audit.record(user.account_id, actor_of(user), "user.set_password")
    db.session.commit()
    return user


PASSWORD_MIN, PASSWORD_MAX = 8, 255


def password_problem(password):
    """Why `password` cannot be a password, or None."""
    from .validation import text_problem
    if not isinstance(password, str) or not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        return f"must be {PASSWORD_MIN}-{PASSWORD_MAX} characters"
    return text_problem(password)


def change_password(user, new_password, current_password=None, actor=None):
    """Set a user's password and end every session opened before (User.set_password bumps the
    session generation; the caller logs the current browser in again if it should stay).
    `current_password` is required from the page (a session left open must not be enough to
    take the account over); the CLI is the operator and passes None. API tokens are kept
    (`logout-user --revoke-tokens` ends those)."""
    errors = {}
    if current_password is not None and not user.check_password(current_password):
        errors["current_password"] = "is not your current password"
    problem = password_problem(new_password)
    if problem:
        errors["new_password"] = problem
    if errors:
        raise FieldErrors(errors)
    user.set_password(new_password)
    user.invite_hash = None  # a password is set: an open invitation link must not set another
    user.invite_expires_at = None
    audit.record(user.account_id, actor or actor_of(user), "user.set_password", target=user.email)
    db.session.commit()
    return user


def _owners_left(account_id, excluding):
    return db.session.execute(select(func.count()).select_from(User).where(
        User.account_id == account_id, User.role == "owner", User.active.is_(True), User.id != excluding)).scalar()


def set_role(actor_user, user_id, role):
    check_role(actor_user, "owner")
    role = validate_role(role)
    user = _member(actor_user, user_id)
    if user.role == role:
        return user
    if user.role == "owner" and not _owners_left(user.account_id, user.id):
        raise BadRequest("'role': the account needs at least one active owner.")
    old, user.role = user.role, role
    audit.record(actor_user.account_id, actor_of(actor_user), "user.role", target=user.email, old=old, new=role)
    db.session.commit()
    return user


def deactivate(actor_user, user_id):
    """Sessions end, tokens are revoked and open sockets close (they re-check auth) at once."""
    from .security import end_sessions
    check_role(actor_user, "owner")
    user = _member(actor_user, user_id)
    if user.id == actor_user.id:
        raise BadRequest("You cannot deactivate yourself.")
    if user.role == "owner" and not _owners_left(user.account_id, user.id):
        raise BadRequest("The account needs at least one active owner.")
    user.active = False
    revoked = db.session.execute(update(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
                                 .values(revoked_at=utcnow())).rowcount
    end_sessions(user, commit=False)
    audit.record(actor_user.account_id, actor_of(actor_user), "user.deactivate", target=user.email,
                 tokens_revoked=revoked)
    db.session.commit()
    return user


def set_role_cli(email, role):
    user = db.session.execute(select(User).where(User.email == validate_email(email))).scalar_one_or_none()
    if user is None:
        raise NotFound(f"unknown user {email!r}")
    role = validate_role(role)
    if user.role == "owner" and role != "owner" and not _owners_left(user.account_id, user.id):
        raise BadRequest("the account needs at least one active owner")
    old, user.role = user.role, role
    audit.record(user.account_id, "cli", "user.role", target=user.email, old=old, new=role)
    db.session.commit()
    return user


# -- API tokens --------------------------------------------------------------------------------------
# The forms parse_expiry takes (the API document states the same pattern).
EXPIRY_PATTERN = r"^$|^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?)?$"


def parse_expiry(value):
    """ISO 8601 date or datetime in the future (naive = UTC), or None for 'never'."""
    if value in (None, ""):
        return None
    bad = "must be a date such as 2027-01-31 (or a date and time, ISO 8601)"
    if not isinstance(value, str) or len(value) > 40 or not re.match(EXPIRY_PATTERN, value):
        raise BadRequest(errors={"expires_at": bad})
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(errors={"expires_at": bad})
    if dt.tzinfo is not None:
        dt = dt.astimezone(timezone.utc).replace(tzinfo=None)
    if dt <= utcnow():
        raise BadRequest(errors={"expires_at": "must be in the future"})
    if dt.year > 9999 - 1:
        raise BadRequest(errors={"expires_at": "is too far in the future"})
    return dt


def create_token(user, name, expires_at=None, scope="full"):
    errors = {}
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > MAX_NAME:
        errors["name"] = f"must be 1-{MAX_NAME} characters"
    if scope not in TOKEN_SCOPES:
        errors["scope"] = "must be 'full' or 'read'"
    try:
        expires = parse_expiry(expires_at)
    except BadRequest as e:
        errors.update(e.errors)
    if errors:
        raise FieldErrors(errors)
    from .quotas import check_tokens
    check_tokens(user)
    tok, raw = ApiToken.issue(user, name=name.strip(), expires_at=expires, scope=scope)
    db.session.flush()
    audit.record(user.account_id, actor_of(user), "token.create", token_id=tok.id, name=tok.name, scope=scope,
                 expires_at=iso(expires))
    db.session.commit()
    return tok, raw


def visible_tokens(user):
    """Your own tokens; an owner sees every token of the account."""
    q = select(ApiToken).where(ApiToken.account_id == user.account_id)
    if RANK.get(user.role, 0) < RANK["owner"]:
        q = q.where(ApiToken.user_id == user.id)
    return db.session.execute(q.order_by(ApiToken.revoked_at.is_not(None), ApiToken.id.desc())).scalars().all()


def revoke_token(user, token_id):
    q = select(ApiToken).where(ApiToken.id == token_id, ApiToken.account_id == user.account_id)
    if RANK.get(user.role, 0) < RANK["owner"]:
        q = q.where(ApiToken.user_id == user.id)
    tok = db.session.execute(q).scalar_one_or_none()
    if tok is None:
        raise NotFound(f"Token {token_id} not found.")
    if tok.revoked_at is None:
        tok.revoked_at = utcnow()
        audit.record(user.account_id, actor_of(user), "token.revoke", token_id=tok.id, name=tok.name)
        db.session.commit()
    return tok


class FieldErrors(BadRequest):
    """Several fields at fault at once: `errors` maps each to its message."""

    def __init__(self, errors):
        self.errors = errors
        super().__init__("; ".join(f"'{k}' {v}" for k, v in errors.items()))


# -- sites ----------------------------------------------------------------------------------------
def _site(account_id, site_id):
    site = db.session.execute(select(Site).where(Site.id == site_id, Site.account_id == account_id)).scalar_one_or_none()
    if site is None:
        raise NotFound(f"Site {site_id} not found.")
    return site


def update_site(actor_user, site_id, data, actor=None):
    check_role(actor_user, "owner")
    site = _site(actor_user.account_id, site_id)
    errors, changes = {}, {}
    unknown = set(data) - {"name", "domain", "timezone", "monthly_budget"}
    for k in sorted(unknown):
        errors[k] = "is not a known field"
    if "name" in data:
        name = data["name"]
        if not isinstance(name, str) or not name.strip() or len(name.strip()) > MAX_NAME:
            errors["name"] = f"must be 1-{MAX_NAME} characters"
        elif name.strip() != site.name:
            clash = db.session.execute(select(Site.id).where(Site.account_id == site.account_id,
                                                            Site.name == name.strip(), Site.id != site.id)).first()
            if clash:
                errors["name"] = f"a site named {name.strip()!r} already exists in this account"
            else:
                changes["name"] = name.strip()
    if "domain" in data:
        domain = data["domain"]
        problem = domain_problem(domain)
        if problem:
            errors["domain"] = problem
        elif (domain or None) != site.domain:
            changes["domain"] = domain or None
    if "timezone" in data:
        try:
            tz = validate_timezone(data["timezone"])
            if tz != site.timezone:
                changes["timezone"] = tz
        except BadRequest as e:
            errors["timezone"] = e.message.split("' ", 1)[-1]
    if "monthly_budget" in data:
        from .automation.budgets import parse_budget
        budget, problem = parse_budget(data["monthly_budget"])
        if problem:
            errors["monthly_budget"] = problem
    if errors:
        raise FieldErrors(errors)
    if "monthly_budget" in data and budget != site.monthly_budget:
        # Under the account's lock, with its alerts and resumes (webapp/account.py); the other
        # fields, all checked above, commit just before it.
        from .account import set_budget
        set_budget(site.account_id, site.id, budget, actor or actor_of(actor_user))
        site = _site(actor_user.account_id, site_id)
    if changes:
        old = {k: getattr(site, k) for k in changes}
        for k, v in changes.items():
            setattr(site, k, v)
        if "timezone" in changes:
            _reschedule(site)
        audit.record(site.account_id, actor or actor_of(actor_user), "site.update", site_id=site.id,
                     changes={k: [old[k], v] for k, v in changes.items()})
        db.session.commit()
    return site


def _reschedule(site):
    """The next scheduled slot is computed in the site's zone: recompute it on a zone change."""
    from .automation import schedule
    from .models import AutomationConfig
    cfg = db.session.execute(select(AutomationConfig).where(AutomationConfig.site_id == site.id)).scalar_one_or_none()
    if cfg is not None and cfg.is_enabled:
        cfg.next_run_at = schedule.next_slot(utcnow(), cfg.frequency, cfg.scheduled_time, site.timezone,
                                             cfg.scheduled_day)


def delete_site(actor_user, site_id, confirm, actor=None):
    """Delete a site and everything of it: rows (the database cascades from the site),
    run logs and images on disk. Refused while a run is active. The credit ledger stays
    (it is the account's history; its rows lose their run reference)."""
    check_role(actor_user, "owner")
    site = _site(actor_user.account_id, site_id)
    if confirm != site.name:
        raise FieldErrors({"confirm": "type the site's name exactly to confirm"})
    active = db.session.execute(select(AutomationRun.id).where(AutomationRun.site_id == site.id,
                                                               AutomationRun.status.in_(ACTIVE_STATUSES))).first()
    if active:
        raise BadRequest(f"Site {site.name!r} has an active run ({active[0]}): cancel it before deleting the site.")
    account_id, name = site.account_id, site.name
    from .models import BudgetAlert, MonthlySpend  # keyed by site id without a foreign key
    for model in (MonthlySpend, BudgetAlert):
        db.session.execute(delete(model).where(model.account_id == account_id, model.site_id == site.id))
    db.session.delete(site)
    audit.record(account_id, actor or actor_of(actor_user), "site.delete", site_id=site_id, name=name)
    db.session.commit()
    _remove_files(account_id, site_id)
    return name


def _remove_files(account_id, site_id):
    # Keys from integers only: never from user input.
    from .automation.retention import delete_site_files
    delete_site_files(account_id, site_id)
