from ..extensions import db
from ..models import ApiToken, User
from ..models.accounts import DUMMY_PASSWORD_HASH
from ..models.base import utcnow
from werkzeug.security import check_password_hash


def user_for_bearer(header):
    """The active user behind an `Authorization: Bearer <token>` header, or None."""
    if not header or not header.startswith("Bearer "):
        return None, None
    raw = header[len("Bearer "):].strip()
    if not raw:
        return None, None
    tok = db.session.execute(
        db.select(ApiToken).where(ApiToken.token_hash == ApiToken.hash(raw), ApiToken.revoked_at.is_(None))
    ).scalar_one_or_none()
    if tok is None or not tok.user.active:
        return None, None
    return tok.user, tok


def check_credentials(email, password):
    """The user for a valid email+password, else None. An unknown email still runs one
    password hash check so both failures take the same time."""
    user = db.session.execute(
        db.select(User).where(User.email == (email or "").strip().lower())
    ).scalar_one_or_none()
    if user is None:
        check_password_hash(DUMMY_PASSWORD_HASH, password or "")
        return None
    if not user.check_password(password or "") or not user.active:
        return None
    return user


def touch(token):
    token.last_used_at = utcnow()
