"""JSON API under /api/v1/ (SPEC §6). Views are thin: they parse, call a service, wrap."""
from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api/v1")


def init_app(app):
    from ..extensions import csrf
    from . import (auth_routes, automation, errors, fields, openapi, planner, review, sites, team,  # noqa: F401
                   webhooks)
    fields.register(app)
    # Bearer calls need no CSRF; session calls are checked in context.authenticate().
    csrf.exempt(bp)
    errors.register(app)
    app.register_blueprint(bp)
