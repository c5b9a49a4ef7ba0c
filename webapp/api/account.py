"""/api/v1/account/: the caller's account (balance, holds, limits, monthly budget, spent this
month) and its budget (owners). Thin: webapp/account.py does the work."""
from flask import g

from .. import account
from ..access import needs
from . import schemas as s
from .context import json_body
from .errors import ok
from .spec import endpoint

FORBIDDEN = {403: "Your role (or the token's scope) does not allow this"}


@endpoint("/account", ["GET"], ok=s.ok("AccountResponse", s.AccountOut), tags=["account"])
def get_account():
    """The account: balance, what active runs hold, limits (the account's own and what
    applies), the monthly budget (calendar month in UTC; null = none) and this month's spend."""
    return ok(account.summary(g.account_id))


@endpoint("/account", ["PATCH"], ok=s.ok("AccountUpdatedResponse", s.AccountOut), body_doc=s.AccountUpdate,
          errors={**FORBIDDEN, 400: "Invalid input: `errors` names every field at fault"}, tags=["account"])
@needs("owner")
def update_account():
    """Set (`{"monthly_budget": N}`) or remove (`null`) the account's monthly budget. Owners
    only. Runs a budget paused resume when the new budget leaves them room."""
    return ok(account.update_account(g.user, json_body(), g.actor))
