"""JSON API under /api/v1/ (SPEC §6). Views are thin: they parse, call a service, wrap.
Routes are declared with `spec.endpoint` and models from `schemas.py` (see spec.py)."""
from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api/v1")


def init_app(app):
    from ..extensions import csrf
    from ..security import limit_api
    from . import account, auth_routes, automation, costs, errors, planner, review, sites, spec, team, webhooks  # noqa: F401  (routes)
    # Bearer calls need no CSRF; session calls are checked in context.authenticate().
    csrf.exempt(bp)
    limit_api(bp)
    errors.register(app)
    app.register_blueprint(bp)
    app.register_blueprint(spec.docs_bp)
