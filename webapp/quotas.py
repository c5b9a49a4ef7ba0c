"""Quotas of a shared service: how much one tenant may hold, checked before anything is
written so that a refused change leaves nothing half-inserted.

| quota | default (env) | per-account override |
|---|---|---|
| keywords per site | `MAX_KEYWORDS_PER_SITE` (100000) | `Account.max_keywords_per_site` (`set-account-limits`) |
| live API tokens per user | `MAX_TOKENS_PER_USER` (50) | — |
| webhooks per site | `MAX_WEBHOOKS_PER_SITE` (20) | — |
| pending invitations per account | `MAX_PENDING_INVITATIONS` (50) | — |

A refusal is a 400 whose message names the limit and the current count, with the field at
fault in `errors` (the API's and the forms' usual shape).
"""
from flask import current_app
from sqlalchemy import func, or_, select

from .errors import BadRequest
from .extensions import db
from .models import Account, ApiToken, Keyword, User, Webhook
from .models.base import utcnow


class QuotaExceeded(BadRequest):
    def __init__(self, field, message, limit, current):
        # The whole sentence next to the field too: a form shows only the field's message.
        super().__init__(message, errors={field: message})
        self.limit, self.current = limit, current


def keyword_limit(account_id):
    acc = db.session.get(Account, account_id)
    own = acc.max_keywords_per_site if acc is not None else None
    return own if own is not None else current_app.config["MAX_KEYWORDS_PER_SITE"]


def keyword_count(site_id):
    return db.session.execute(select(func.count(Keyword.id)).where(Keyword.site_id == site_id)).scalar()


def check_keywords(site, adding, field="keywords"):
    """Refuse an import that would take the site past its keyword limit (all or nothing)."""
    if adding <= 0:
        return
    limit, current = keyword_limit(site.account_id), keyword_count(site.id)
    if current + adding > limit:
        raise QuotaExceeded(field, f"This site has {current:,} keywords and its limit is {limit:,}: the "
                                   f"{adding:,} new keywords of this import would exceed it, so nothing was "
                                   f"imported.", limit, current)


def check_keyword_room(site, field="keywords"):
    """Refuse at once an import into a site that is already full (before queueing it)."""
    limit, current = keyword_limit(site.account_id), keyword_count(site.id)
    if current >= limit:
        raise QuotaExceeded(field, f"This site has {current:,} keywords, its limit ({limit:,}): nothing was "
                                   f"imported.", limit, current)


def check_tokens(user):
    limit = current_app.config["MAX_TOKENS_PER_USER"]
    now = utcnow()
    current = db.session.execute(select(func.count(ApiToken.id)).where(
        ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None),
        or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > now))).scalar()
    if current >= limit:
        raise QuotaExceeded("tokens", f"You have {current:,} live API tokens, the limit per user ({limit:,}): "
                                      f"revoke one first.", limit, current)


def check_webhooks(site):
    limit = current_app.config["MAX_WEBHOOKS_PER_SITE"]
    current = db.session.execute(select(func.count(Webhook.id)).where(Webhook.site_id == site.id)).scalar()
    if current >= limit:
        raise QuotaExceeded("webhooks", f"This site has {current:,} webhooks, the limit per site ({limit:,}): "
                                        f"delete one first.", limit, current)


def check_invitations(account_id):
    limit = current_app.config["MAX_PENDING_INVITATIONS"]
    current = db.session.execute(select(func.count(User.id)).where(
        User.account_id == account_id, User.invite_hash.is_not(None),
        or_(User.invite_expires_at.is_(None), User.invite_expires_at > utcnow()))).scalar()
    if current >= limit:
        raise QuotaExceeded("email", f"This account has {current:,} pending invitations, the limit "
                                     f"({limit:,}): wait until some are accepted or expire.", limit, current)
