from flask import request

from ..auth.tokens import check_credentials
from ..extensions import db
from ..models import ApiToken
from ..quotas import check_tokens
from ..security import login_throttle
from . import schemas as s
from .errors import ApiError, ok
from .spec import endpoint


@endpoint("/ping", ["GET"], ok=s.ok("PongResponse", s.Pong), tags=["auth"])
def ping():
    """The smallest authenticated route: the baseline of the API load benchmark."""
    return ok({"pong": True})


@endpoint("/auth/token", ["POST"], json=s.TokenRequest, form=s.TokenRequest, status=201,
          ok=s.ok("TokenResponse", s.Token), auth=False,
          errors={401: "Invalid email or password",
                  400: "Invalid input (`errors` names the fields), or the user has MAX_TOKENS_PER_USER (50) "
                       "live tokens already (`errors.tokens` names the limit and the count)",
                  429: "Too many failed logins from this address, for this email or in all "
                       "(Retry-After says when)"}, tags=["auth"])
@login_throttle
def issue_token():
    """Exchange email + password (JSON or form) for an API token."""
    body = request.context.json or request.context.form
    user = check_credentials(body.email, body.password)
    if user is None:
        raise ApiError("Invalid email or password.", 401)
    # The same per-user cap as the Tokens page and POST /auth/tokens/: a login loop must not
    # pile up live tokens past it.
    check_tokens(user)
    tok, raw = ApiToken.issue(user, name=(body.name or "api")[:120])
    db.session.commit()
    return ok({"token": raw, "token_id": tok.id}, 201)
