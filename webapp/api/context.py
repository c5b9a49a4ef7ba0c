"""Who is calling the API: bearer token or browser session (+ CSRF on state changes)."""
from functools import wraps

from flask import g, request
from flask_login import current_user
from flask_wtf.csrf import CSRFError, validate_csrf

from ..auth.tokens import parse_bearer, touch, user_for_bearer
from .errors import ApiError

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def authenticate():
    header = request.headers.get("Authorization")
    if header:
        if parse_bearer(header) is None:
            raise ApiError("Malformed Authorization header: expected 'Bearer <token>'.", 401)
        user, token = user_for_bearer(header)
        if user is None:
            raise ApiError("Invalid or revoked API token.", 401)
        touch(token)
        g.user, g.account_id, g.actor = user, user.account_id, f"token:{token.id} ({user.email})"
        _authorise(user, token)
        return
    if current_user.is_authenticated:
        if request.method not in SAFE_METHODS:
            try:
                validate_csrf(request.headers.get("X-CSRFToken") or request.form.get("csrf_token"))
            except (CSRFError, Exception) as e:  # ValidationError carries the reason
                raise ApiError(f"CSRF token missing or invalid: {e}", 400)
        g.user, g.account_id, g.actor = current_user, current_user.account_id, f"user:{current_user.email}"
        _authorise(current_user, None)
        return
    raise ApiError("Authentication required: credentials missing; send 'Authorization: Bearer <token>' "
                   "or log in.", 401)


def _authorise(user, token):
    """Roles and token scopes, decided in one place (webapp/access.py)."""
    from ..access import Forbidden, check
    try:
        check(user, token=token)
    except Forbidden as e:
        raise ApiError(e.message, 403)


def api_auth(fn):
    @wraps(fn)
    def wrapper(*args, **kwargs):
        authenticate()
        return fn(*args, **kwargs)
    return wrapper


def json_body():
    """The request's JSON object, for views that validate their body themselves."""
    if request.mimetype != "application/json":
        raise ApiError("Content-Type must be application/json.", 415)
    data = request.get_json(silent=True)
    if data is None:
        raise ApiError("Malformed JSON body.", 400, {"body": "malformed JSON"})
    if not isinstance(data, dict):
        raise ApiError("JSON body must be an object.", 400, {"body": "must be an object"})
    return data
