from datetime import timedelta

from sqlalchemy import update

from ..extensions import db
from ..models import ApiToken, User
from ..models.accounts import dummy_password_hash
from ..models.base import utcnow
from ..security import parse_bearer  # noqa: F401  (the header's form; also named here for the API)
from werkzeug.security import check_password_hash


def user_for_bearer(header):
    """The active user behind an `Authorization: Bearer <token>` header, or None."""
    raw = parse_bearer(header)
    if raw is None:
        return None, None
    # One query for token and user: every API call pays for this lookup.
    row = db.session.execute(
        db.select(ApiToken, User).join(User, User.id == ApiToken.user_id)
        .where(ApiToken.token_hash == ApiToken.hash(raw), ApiToken.revoked_at.is_(None), User.active.is_(True),
               (ApiToken.expires_at.is_(None)) | (ApiToken.expires_at > utcnow()))
    ).first()
    if row is None:
        return None, None
    return row.User, row.ApiToken


def caller_account_id():
    """The account behind this request: a bearer token header, else the session; None when
    neither (a bad token does not fall back to the session)."""
    from flask import request
    from flask_login import current_user
    header = request.headers.get("Authorization")
    if header:
        user, _tok = user_for_bearer(header)
        return user.account_id if user else None
    return current_user.account_id if current_user.is_authenticated else None


def check_credentials(email, password):
    """The user for a valid email+password, else None. An unknown email still runs one
    password hash check so both failures take the same time."""
    user = db.session.execute(
        db.select(User).where(User.email == (email or "").strip().lower())
    ).scalar_one_or_none()
    if user is None:
        check_password_hash(dummy_password_hash(), password or "")
        return None
    if not user.check_password(password or "") or not user.active:
        return None
    return user


TOUCH_EVERY = timedelta(minutes=1)


def touch(token):
    """Record token use at most once a minute, in its own tiny transaction: a write per
    request would make every API call of a client queue up on the same row."""
    now = utcnow()
    if token.last_used_at and now - token.last_used_at < TOUCH_EVERY:
        return
    db.session.execute(update(ApiToken).where(ApiToken.id == token.id).values(last_used_at=now))
    db.session.commit()
