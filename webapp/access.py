"""Who may do what: roles, enforced in one place for the API, web forms, htmx panels and
websockets.

- `viewer` reads everything of the account and watches live views; changes nothing.
- `operator` also runs, pauses, resumes, cancels and retries runs, edits the config, imports
  keywords, reviews content and manages webhooks.
- `owner` also manages sites, users and every API token of the account.

The rule is default-deny for changes: every request with a state-changing method needs at
least `operator` unless its view is marked with `@needs(...)`. So a route added later is
protected without anyone remembering to protect it. Reads (GET/HEAD/OPTIONS, websockets)
need `viewer`. A token's scope (`read`) and its user's role both apply: a token never does more
than its user may.
"""
from flask import current_app, request
from flask_login import current_user

from .errors import AppError

ROLES = ("viewer", "operator", "owner")
RANK = {r: i for i, r in enumerate(ROLES)}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_WRITE_ROLE = "operator"
# Web endpoints anyone may POST to whatever their role (they act on the caller only).
_OPEN_WEB = {"auth.login", "auth.logout", "team_web.set_password", "team_web.accept_invite"}


class Forbidden(AppError):
    status = 403


def needs(role):
    """Mark a view as needing `role` for its state-changing methods (default: operator)."""
    assert role in RANK, role

    def mark(fn):
        fn.required_role = role
        return fn
    return mark


def role_of(user):
    return getattr(user, "role", None) if getattr(user, "role", None) in RANK else "viewer"


def has_role(user, role):
    return RANK[role_of(user)] >= RANK[role]


def required_role(endpoint, method):
    if method in SAFE_METHODS:
        return "viewer"
    view = current_app.view_functions.get(endpoint)
    return getattr(view, "required_role", DEFAULT_WRITE_ROLE)


def check(user, endpoint=None, method=None, token=None):
    """Raise Forbidden unless `user` (through `token`, if any) may call this endpoint."""
    endpoint = endpoint or request.endpoint
    method = method or request.method
    if token is not None and method not in SAFE_METHODS:
        if token.scope == "read":
            raise Forbidden("This API token is read-only (scope 'read'); this action needs a 'full' token.")
    need = required_role(endpoint, method)
    if not has_role(user, need):
        raise Forbidden(f"This action needs the {need} role (you are a {role_of(user)}).")


def check_role(user, role):
    """For service-level checks that do not map to one request (e.g. a role change)."""
    if not has_role(user, role):
        raise Forbidden(f"This action needs the {role} role (you are a {role_of(user)}).")


def init_app(app):
    @app.before_request
    def _web_forms():
        # The API checks in its own authenticate() (it knows the token); static files and
        # anonymous requests are not ours to judge (login_required redirects those).
        if request.method in SAFE_METHODS or request.blueprint == "api" or request.endpoint in (None, "static"):
            return None
        if request.endpoint in _OPEN_WEB or not current_user.is_authenticated:
            return None
        try:
            check(current_user)
        except Forbidden as e:
            from flask import render_template
            return render_template("error.html", code=403, message=e.message), 403
        return None

    @app.context_processor
    def _roles():
        def can(role):
            return current_user.is_authenticated and has_role(current_user, role)
        def deny(role="operator"):
            """Attributes that disable a control the user's role may not use, saying why."""
            from markupsafe import Markup
            if can(role):
                return Markup("")
            return Markup(f' disabled aria-disabled="true" title="Needs the {role} role"')
        return {"can": can, "deny": deny}
