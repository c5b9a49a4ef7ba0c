from flask import g, request
from sqlalchemy import select

from .. import audit
from ..access import needs
from ..extensions import db
from ..models import Site
from ..sites import create_site
from . import schemas as s
from .errors import ok
from .spec import endpoint


@endpoint("/sites", ["GET"], ok=s.ok("SitesResponse", s.Sites), tags=["sites"])
def list_sites():
    """The account's sites."""
    sites = db.session.execute(select(Site).where(Site.account_id == g.account_id).order_by(Site.id)).scalars()
    return ok({"sites": [site.to_dict() for site in sites]})


@endpoint("/sites", ["POST"], json=s.SiteCreate, status=201, ok=s.ok("SiteCreatedResponse", s.SiteCreated),
          errors={409: "A site with this name already exists in the account"}, tags=["sites"],
          links={name: (name, {"site_id": "$response.body#/data/site/id"}) for name in (
              "config", "update_config", "keywords_bulk", "run_now", "history", "estimate", "current_run")})
@needs("owner")
def create():
    """Create a site (with its automation config). Owners only."""
    body = request.context.json
    site = create_site(g.account_id, body.name, body.domain, body.timezone)
    audit.record(g.account_id, g.actor, "site.create", site_id=site.id, name=site.name)
    db.session.commit()
    return ok({"site": site.to_dict()}, 201)
