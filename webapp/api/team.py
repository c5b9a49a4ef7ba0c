"""Team routes: API tokens, site edit/delete, the audit log. Roles are enforced centrally
(webapp/access.py via context.authenticate); `needs` marks routes that differ from the default."""
from flask import g, request

from .. import audit, team
from ..access import needs
from ..errors import AppError
from . import bp
from .context import api_auth, int_param, json_body
from .errors import ApiError, ok


def _raise(e):
    raise ApiError(e.message, e.status, errors=getattr(e, "errors", None))


def _path_id(value, what):
    if not (0 < value <= 2**31 - 1):
        raise ApiError(f"{what} {value} not found.", 404)
    return value


@bp.get("/auth/tokens")
@bp.get("/auth/tokens/")
@api_auth
def list_tokens():
    return ok({"tokens": [t.to_dict() for t in team.visible_tokens(g.user)]})


@bp.post("/auth/tokens")
@bp.post("/auth/tokens/")
@needs("viewer")  # everyone manages their own tokens; a token never exceeds its user's role
@api_auth
def create_token():
    data = json_body()
    unknown = sorted(set(data) - {"name", "expires_at", "scope"})
    if unknown:
        raise ApiError(f"'{unknown[0]}' is not a known field.", 400, errors={k: "is not a known field" for k in unknown})
    try:
        tok, raw = team.create_token(g.user, data.get("name", "api"), data.get("expires_at"), data.get("scope", "full"))
    except AppError as e:
        _raise(e)
    return ok({"token": raw, **tok.to_dict()}, 201)


@bp.delete("/auth/tokens/<int:token_id>")
@bp.delete("/auth/tokens/<int:token_id>/")
@needs("viewer")
@api_auth
def delete_token(token_id):
    try:
        tok = team.revoke_token(g.user, _path_id(token_id, "Token"))
    except AppError as e:
        _raise(e)
    return ok(tok.to_dict())


@bp.route("/sites/<int:site_id>", methods=["PATCH"])
@bp.route("/sites/<int:site_id>/", methods=["PATCH"])
@needs("owner")
@api_auth
def update_site(site_id):
    try:
        site = team.update_site(g.user, _path_id(site_id, "Site"), json_body(), actor=g.actor)
    except AppError as e:
        _raise(e)
    return ok({"site": site.to_dict()})


@bp.delete("/sites/<int:site_id>")
@bp.delete("/sites/<int:site_id>/")
@needs("owner")
@api_auth
def delete_site(site_id):
    site_id = _path_id(site_id, "Site")
    # The name is the confirmation (as in the UI): `?confirm=<name>` or a JSON body.
    confirm = request.args.get("confirm")
    if confirm is None and request.content_length:
        confirm = json_body().get("confirm")
    try:
        name = team.delete_site(g.user, site_id, confirm, actor=g.actor)
    except AppError as e:
        _raise(e)
    return ok({"deleted": site_id, "name": name})


@bp.get("/audit")
@bp.get("/audit/")
@api_auth
def audit_log():
    page = int_param("page", required=False, default=1)
    limit = int_param("limit", required=False, default=50, maximum=audit.PAGE_LIMIT_MAX)
    # Scoped by account in the query: another account's site id simply matches nothing, and
    # a deleted site's entries stay readable by its old id.
    site_id = int_param("site_id", required=False)
    rows, total = audit.query(g.account_id, site_id=site_id, actor=(request.args.get("actor") or None),
                              action=(request.args.get("action") or None), page=page, limit=limit)
    return ok({"entries": [r.to_dict() for r in rows], "total": total, "page": page, "limit": limit})

