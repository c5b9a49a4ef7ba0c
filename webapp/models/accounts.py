import hashlib
import secrets

from flask_login import UserMixin
from werkzeug.security import check_password_hash, generate_password_hash

from ..extensions import db
from .base import utcnow


class Account(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(120), nullable=False, unique=True)
    credits = db.Column(db.Integer, nullable=False, default=0)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    __table_args__ = (db.CheckConstraint("credits >= 0", name="credits_non_negative"),)


class User(UserMixin, db.Model):
    id = db.Column(db.Integer, primary_key=True)
    email = db.Column(db.String(255), nullable=False, unique=True)
    password_hash = db.Column(db.String(255), nullable=False)
    account_id = db.Column(db.Integer, db.ForeignKey("account.id", ondelete="CASCADE"), nullable=False, index=True)
    active = db.Column(db.Boolean, nullable=False, default=True)
    # Part of every session cookie (see get_id); bumping it ends all earlier sessions
    # (webapp/security.py: end_sessions).
    session_generation = db.Column(db.Integer, nullable=False, default=0, server_default="0")
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    account = db.relationship(Account)

    def set_password(self, password):
        # A new password ends every session opened with the old one.
        if self.password_hash is not None and self.id is not None:
            self.session_generation = (self.session_generation or 0) + 1
        self.password_hash = generate_password_hash(password)

    def get_id(self):
        # Flask-Login keeps this in the session cookie; the loader accepts it only while
        # the generation still matches (Flask-Login's "alternative tokens" pattern).
        return f"{self.id}:{self.session_generation or 0}"

    def check_password(self, password):
        return check_password_hash(self.password_hash, password)

    @property
    def is_active(self):
        return self.active


# A well-formed hash that matches no password, so an unknown email costs the same time.
DUMMY_PASSWORD_HASH = generate_password_hash(secrets.token_hex(8))


class ApiToken(db.Model):
    """Bearer tokens: only a SHA-256 of the token is stored (tokens are 256-bit random,
    so a fast hash is enough; a leaked DB does not leak usable tokens)."""
    id = db.Column(db.Integer, primary_key=True)
    user_id = db.Column(db.Integer, db.ForeignKey("user.id", ondelete="CASCADE"), nullable=False, index=True)
    account_id = db.Column(db.Integer, db.ForeignKey("account.id", ondelete="CASCADE"), nullable=False, index=True)
    token_hash = db.Column(db.String(64), nullable=False, unique=True)
    name = db.Column(db.String(120), nullable=False, default="api")
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    last_used_at = db.Column(db.DateTime)
    revoked_at = db.Column(db.DateTime)
    user = db.relationship(User)

    @staticmethod
    def hash(raw):
        return hashlib.sha256(raw.encode()).hexdigest()

    @classmethod
    def issue(cls, user, name="api"):
        raw = "ac_" + secrets.token_urlsafe(32)
        tok = cls(user_id=user.id, account_id=user.account_id, token_hash=cls.hash(raw), name=name)
        db.session.add(tok)
        return tok, raw
