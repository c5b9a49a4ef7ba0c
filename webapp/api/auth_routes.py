from flask import request

from ..extensions import db
from ..models import ApiToken
from ..auth.tokens import check_credentials
from ..security import login_throttle
from . import bp
from .context import api_auth
from .errors import ApiError, ok


@bp.get("/ping")
@api_auth
def ping():
    """The smallest authenticated route: the baseline of the API load benchmark."""
    return ok({"pong": True})


@bp.post("/auth/token")
@bp.post("/auth/token/")
@login_throttle
def issue_token():
    data = request.get_json(silent=True) if request.is_json else request.form
    data = data if isinstance(data, dict) or hasattr(data, "get") else {}
    email, password = data.get("email"), data.get("password")
    if not email or not isinstance(email, str):
        raise ApiError("'email' is required.", 400)
    if not password or not isinstance(password, str):
        raise ApiError("'password' is required.", 400)
    user = check_credentials(email, password)
    if user is None:
        raise ApiError("Invalid email or password.", 401)
    tok, raw = ApiToken.issue(user, name=str(data.get("name") or "api")[:120])
    db.session.commit()
    return ok({"token": raw, "token_id": tok.id}, 201)
