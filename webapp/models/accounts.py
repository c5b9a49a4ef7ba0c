import functools
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
    # Limits of a shared service (webapp/automation/fairness.py, quotas): None = the
    # environment's default (ACCOUNT_MAX_ACTIVE_RUNS, MAX_KEYWORDS_PER_SITE).
    max_active_runs = db.Column(db.Integer)
    max_keywords_per_site = db.Column(db.Integer)
    # Share of the workers when several accounts have work (fair dispatch), default 1.
    weight = db.Column(db.Float, nullable=False, default=1.0, server_default="1")
    # Credits this account may spend per calendar month (None = no budget).
    monthly_budget = db.Column(db.Integer)
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
    # owner | operator | viewer (webapp/access.py decides what each may do).
    role = db.Column(db.String(16), nullable=False, default="operator", server_default="owner")
    # An invited user sets a password through a one-time link (only its SHA-256 is stored).
    invite_hash = db.Column(db.String(64), unique=True)
    invite_expires_at = db.Column(db.DateTime)
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


@functools.cache
def dummy_password_hash():
    """A well-formed hash that matches no password, so an unknown email costs the same time.
    Made on first use, not at import: every worker, CLI and web process imports this module
    and only a login needs it (scrypt: ~0.1 s of CPU a process)."""
    return generate_password_hash(secrets.token_hex(8))


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
    expires_at = db.Column(db.DateTime)  # None = never
    scope = db.Column(db.String(8), nullable=False, default="full", server_default="full")  # full | read
    user = db.relationship(User)

    def to_dict(self):
        from .base import iso
        return {"id": self.id, "name": self.name, "scope": self.scope, "created_at": iso(self.created_at),
                "last_used_at": iso(self.last_used_at), "expires_at": iso(self.expires_at),
                "revoked_at": iso(self.revoked_at), "user": self.user.email if self.user else None}

    @staticmethod
    def hash(raw):
        return hashlib.sha256(raw.encode()).hexdigest()

    @classmethod
    def issue(cls, user, name="api", expires_at=None, scope="full"):
        raw = "ac_" + secrets.token_urlsafe(32)
        tok = cls(user_id=user.id, account_id=user.account_id, token_hash=cls.hash(raw), name=name,
                  expires_at=expires_at, scope=scope)
        db.session.add(tok)
        return tok, raw


class AuditEntry(db.Model):
    """The account's audit log: every state change by a person or the system, written in the
    same transaction as the change (webapp/audit.py)."""
    __tablename__ = "audit_entry"
    id = db.Column(db.Integer, primary_key=True)
    account_id = db.Column(db.Integer, db.ForeignKey("account.id", ondelete="CASCADE"), nullable=False)
    # No foreign key: the entry for a deleted site must outlive the site.
    site_id = db.Column(db.Integer)
    run_id = db.Column(db.Integer)
    actor = db.Column(db.String(255), nullable=False)
    action = db.Column(db.String(64), nullable=False)
    details = db.Column(db.JSON)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    __table_args__ = (db.Index("ix_audit_account_id", "account_id", "id"),)

    def to_dict(self):
        from .base import iso
        return {"id": self.id, "at": iso(self.created_at), "actor": self.actor, "action": self.action,
                "site_id": self.site_id, "run_id": self.run_id, "details": self.details or {}}
