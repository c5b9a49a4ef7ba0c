"""Team routes: API tokens, site edit/delete, the audit log. Roles are enforced centrally
(webapp/access.py via context.authenticate); `needs` marks routes that differ from the default.
Bodies are checked by webapp/team.py (its field messages); the models document them."""
from flask import g, request

from .. import audit, team
from ..access import needs
from . import schemas as s
from .context import json_body
from .errors import ApiError, ok
from .spec import endpoint

FORBIDDEN = {403: "Your role (or the token's scope) does not allow this"}


def _path_id(value, what):
    if not (0 < value <= 2**31 - 1):
        raise ApiError(f"{what} {value} not found.", 404)
    return value


@endpoint("/auth/tokens", ["GET"], ok=s.ok("TokensResponse", s.Tokens), tags=["auth"])
def list_tokens():
    """Your API tokens (an owner sees every token of the account)."""
    return ok({"tokens": [t.to_dict() for t in team.visible_tokens(g.user)]})


@endpoint("/auth/tokens", ["POST"], status=201, ok=s.ok("TokenCreatedResponse", s.TokenCreated),
          body_doc=s.TokenCreate, errors=FORBIDDEN, tags=["auth"],
          links={"revoke": ("delete_token", {"token_id": "$response.body#/data/id"})})
@needs("viewer")  # everyone manages their own tokens; a token never exceeds its user's role
def create_token():
    """Create an API token (shown once)."""
    data = json_body()
    unknown = sorted(set(data) - {"name", "expires_at", "scope"})
    if unknown:
        raise ApiError(errors={k: "is not a known field" for k in unknown})
    tok, raw = team.create_token(g.user, data.get("name", "api"), data.get("expires_at"), data.get("scope", "full"))
    return ok({"token": raw, **tok.to_dict()}, 201)


@endpoint("/auth/tokens/<int:token_id>", ["DELETE"], ok=s.ok("TokenRevokedResponse", s.TokenOut),
          errors={**FORBIDDEN, 404: "Token not found, or not yours to revoke"}, tags=["auth"])
@needs("viewer")
def delete_token(token_id):
    """Revoke a token."""
    return ok(team.revoke_token(g.user, _path_id(token_id, "Token")).to_dict())


@endpoint("/sites/<int:site_id>", ["PATCH"], ok=s.ok("SiteUpdatedResponse", s.SiteCreated), body_doc=s.SiteUpdate,
          errors={**FORBIDDEN, 404: "Site not found, or another account's"}, tags=["sites"])
@needs("owner")
def update_site(site_id):
    """Rename a site, change its domain or time zone (schedules follow the new zone). Owners only."""
    site = team.update_site(g.user, _path_id(site_id, "Site"), json_body(), actor=g.actor)
    return ok({"site": site.to_dict()})


@endpoint("/sites/<int:site_id>", ["DELETE"], query=s.DeleteSiteQuery, ok=s.ok("SiteDeletedResponse", s.SiteDeleted),
          errors={**FORBIDDEN, 400: "The confirmation does not match the site's name, or a run is active",
                  404: "Site not found, or another account's"}, tags=["sites"])
@needs("owner")
def delete_site(site_id):
    """Delete a site and everything it made. The site's name is the confirmation (`?confirm=<name>`
    or a JSON body `{"confirm": ...}`). Owners only."""
    site_id = _path_id(site_id, "Site")
    confirm = request.context.query.confirm
    if confirm is None and request.content_length:
        confirm = json_body().get("confirm")
    name = team.delete_site(g.user, site_id, confirm, actor=g.actor)
    return ok({"deleted": site_id, "name": name})


@endpoint("/audit", ["GET"], query=s.AuditQuery, ok=s.ok("AuditResponse", s.AuditLog), tags=["audit"])
def audit_log():
    """The account's audit log, newest first: who changed what, when."""
    q = request.context.query
    # Scoped by account in the query: another account's site id simply matches nothing, and
    # a deleted site's entries stay readable by its old id.
    rows, total = audit.query(g.account_id, site_id=q.site_id, actor=q.actor or None, action=q.action or None,
                              page=q.page, limit=q.limit)
    return ok({"entries": [r.to_dict() for r in rows], "total": total, "page": q.page, "limit": q.limit})
