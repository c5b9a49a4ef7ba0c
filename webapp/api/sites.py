from flask import g
from sqlalchemy import select

from .. import audit
from ..access import needs
from ..errors import AppError
from ..extensions import db
from ..models import Site
from ..sites import create_site
from . import bp
from .context import api_auth, json_body
from .errors import ApiError, ok


@bp.get("/sites")
@bp.get("/sites/")
@api_auth
def list_sites():
    sites = db.session.execute(select(Site).where(Site.account_id == g.account_id).order_by(Site.id)).scalars()
    return ok({"sites": [s.to_dict() for s in sites]})


@bp.post("/sites")
@bp.post("/sites/")
@needs("owner")
@api_auth
def create():
    data = json_body()
    unknown = set(data) - {"name", "domain", "timezone"}
    if unknown:
        raise ApiError(f"'{sorted(unknown)[0]}' is not a known field.", 400)
    if "name" not in data:
        raise ApiError("'name' is required.", 400)
    try:
        site = create_site(g.account_id, data.get("name"), data.get("domain"), data.get("timezone") or "UTC")
    except AppError as e:
        raise ApiError(e.message, e.status)
    audit.record(g.account_id, g.actor, "site.create", site_id=site.id, name=site.name)
    db.session.commit()
    return ok({"site": site.to_dict()}, 201)
