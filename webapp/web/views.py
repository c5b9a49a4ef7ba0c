"""Server-rendered pages (SPEC §8). Views are thin: AutomationService does the work."""
from flask import Blueprint, abort, render_template
from flask_login import current_user, login_required
from sqlalchemy import select

from ..automation.service import AutomationService
from ..errors import NotFound
from ..extensions import db
from ..models import AutomationConfig, Site

bp = Blueprint("web", __name__)


def service():
    return AutomationService(current_user.account_id, actor=f"user:{current_user.email}")


@bp.get("/")
@login_required
def dashboard():
    svc = service()
    sites = db.session.execute(select(Site).where(Site.account_id == current_user.account_id)
                               .order_by(Site.name)).scalars().all()
    rows = []
    for s in sites:
        cfg = db.session.execute(select(AutomationConfig).where(AutomationConfig.site_id == s.id)).scalar_one_or_none()
        overview = svc.pipeline_overview(s.id)
        rows.append({"site": s, "run": svc.active_run(s.id), "config": cfg,
                     "pending": sum(st["pending"] for st in overview)})
    return render_template("dashboard.html", rows=rows)


@bp.get("/sites/<int:site_id>/automation")
@login_required
def site_automation(site_id):
    svc = service()
    try:
        site = svc.site(site_id)
    except NotFound:
        abort(404)
    return render_template("automation.html", site=site, config=svc.config_dict(svc.config(site.id)),
                           estimate=svc.estimate(site.id), overview=svc.pipeline_overview(site.id),
                           run=svc.active_run(site.id), history=svc.history(site.id), errors={})
