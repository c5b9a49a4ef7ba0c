"""Server-rendered pages (SPEC §8). Views are thin: AutomationService does the work.

Every form works without JavaScript (POST, then redirect); htmx swaps panels in place and
polls them (`hx-trigger="every …"`); websockets (webapp/web/live.py) stream the log tail
and the processing state.
"""
from pathlib import Path

from flask import (Blueprint, Response, abort, current_app, flash, jsonify, redirect, render_template, request,
                   send_file, stream_with_context, url_for)
from flask_login import current_user, login_required
from sqlalchemy import func, select

from ..automation.logger import pruned_message, run_log as log_of, run_log_by_ids
from ..automation.service import AutomationService
from ..errors import AppError, NotFound
from ..extensions import db
from ..models import Cluster, Content, ContentIdea, Image, Keyword, Site, Task
from ..storage import StoreError
from .. import imports, validation
from ..planner import estimate_rows, import_rows, parse_csv
from ..validation import REASON_MAX, clean_text
from . import config_form, snapshot
from .insight_view import FAILED_PER_PAGE

bp = Blueprint("web", __name__)
TABS = {
    "keywords": (Keyword, "Keywords"), "clusters": (Cluster, "Clusters"), "ideas": (ContentIdea, "Ideas"),
    "tasks": (Task, "Tasks"), "content": (Content, "Content"), "images": (Image, "Images"),
}
PER_PAGE = 50
RUN_PAGE_LINES = 500


def service():
    return AutomationService(current_user.account_id, actor=f"user:{current_user.email}")


def owned_site(svc, site_id):
    try:
        return svc.site(site_id)
    except NotFound:
        abort(404)


def owned_run(svc, run_id):
    try:
        return svc.run(run_id)
    except NotFound:
        abort(404)


def form_reason():
    # The same limit as the API's (a 400 naming the field, never a database error).
    return clean_text(request.form.get("reason"), "reason", REASON_MAX)


def flash_run(message, category, run):
    """A flash about a run carries the run's state when it was said (`success|run=5|running`):
    the page drops it as soon as the live refresh shows that run in another state."""
    flash(message, f"{category}|run={run.id}|{run.status}")


def is_htmx():
    return request.headers.get("HX-Request") == "true"


@bp.get("/")
@login_required
def dashboard():
    snap = snapshot.dashboard_snapshot(service(), page=dashboard_page())
    return render_template("dashboard.html", snap=snap, live_version=snapshot.version(snap))


def dashboard_page():
    """?page= of the dashboard: anything but a page number is the first page (past the end: the last)."""
    raw = request.args.get("page", "")
    return min(int(raw), 100_000) if raw.isascii() and raw.isdigit() else 1


# -- site automation page ----------------------------------------------------------------------
def automation_context(svc, site, errors=None, form_values=None, fresh=True):
    snap = snapshot.site_snapshot(svc, site, fresh=fresh, history=snapshot.HistoryQuery(request.args))
    log_lines, log_next = [], 0
    if snap["run"]:
        rl = run_log_by_ids(current_user.account_id, site.id, snap["run"]["id"])
        log_next = rl.count()
        log_lines = rl.tail(30)
    return dict(site=site, snap=snap, config=svc.config_dict(svc.config(site.id)), errors=errors or {},
                form=form_values or {}, log_lines=log_lines, log_next=log_next, live_version=snapshot.version(snap))


@bp.get("/sites/<int:site_id>/automation")
@login_required
def site_automation(site_id):
    svc = service()
    site = owned_site(svc, site_id)
    return render_template("automation.html", **automation_context(svc, site))


@bp.get("/sites/<int:site_id>/automation/panel/<name>")
@login_required
def automation_panel(site_id, name):
    if name not in ("run", "overview", "history", "estimate"):
        abort(404)
    svc = service()
    site = owned_site(svc, site_id)
    return render_template(f"partials/{name}.html", snap=snapshot.site_snapshot(
        svc, site, history=snapshot.HistoryQuery(request.args)), site=site)


# -- live refresh: the same snapshot, rendered into the same partials, as JSON --------------------
# `?v=<version>` from the page (or the last refresh): unchanged → 204, nothing rendered. The
# client morphs each region into the page (static/js/app.js), so focus and scroll stay put.
def live_regions(snap, regions):
    version = snapshot.version(snap)
    if request.args.get("v") == version:
        return "", 204
    body = {"version": version, "regions": {rid: render_template(tpl, snap=snap, **extra)
                                            for rid, (tpl, extra) in regions.items()}}
    return jsonify(body), 200, {"Cache-Control": "no-store"}


@bp.get("/live/sites/<int:site_id>")
@login_required
def live_site(site_id):
    svc = service()
    site = owned_site(svc, site_id)
    snap = snapshot.site_snapshot(svc, site, history=snapshot.HistoryQuery(request.args))
    return live_regions(snap, {
        "run-panel": ("partials/run.html", {"site": site}),
        "estimate-panel": ("partials/estimate.html", {}),
        "overview-panel": ("partials/overview.html", {}),
        "history-panel": ("partials/history.html", {}),
        "log-meta": ("partials/log_meta.html", {}),
        "credit-balance": ("partials/credits.html", {}),
    })


@bp.get("/live/runs/<int:run_id>")
@login_required
def live_run(run_id):
    svc = service()
    run = owned_run(svc, run_id)
    snap = snapshot.run_snapshot(svc, run)
    site = db.session.get(Site, run.site_id)
    return live_regions(snap, {
        "run-head": ("partials/run_head.html", {}),
        "run-summary": ("partials/run_summary.html", {}),
        "run-stages": ("partials/run_stages.html", {}),
        "timeline-card": ("partials/run_timeline.html", {}),
        "failed-card": ("partials/failed_items.html", {"site": site, **failed_context(svc, run, failed_page_arg())}),
        "credit-balance": ("partials/credits.html", {}),
    })


@bp.get("/live/dashboard")
@login_required
def live_dashboard():
    snap = snapshot.dashboard_snapshot(service(), page=dashboard_page())
    return live_regions(snap, {"dashboard-rows": ("partials/dashboard_rows.html", {}),
                               "credit-balance": ("partials/credits.html", {})})


@bp.post("/sites/<int:site_id>/automation")
@bp.post("/sites/<int:site_id>/automation/config")
@login_required
def save_config(site_id):
    """The form posts to the page's own URL: with errors the page is shown again right there
    (400, every invalid field named), else back to it at the form."""
    svc = service()
    site = owned_site(svc, site_id)
    data, errors = config_form.parse(request.form)
    if not errors:
        try:
            svc.update_config(site.id, data)
        except AppError as e:
            errors.update(e.errors or {"form": e.message})
    if errors:
        db.session.rollback()
        ctx = automation_context(svc, site, errors=errors, form_values=request.form)
        return render_template("automation.html", **ctx), 400
    flash("Configuration saved.", "success")
    return redirect(url_for("web.site_automation", site_id=site.id) + "#config")


@bp.post("/sites/<int:site_id>/automation/run")
@login_required
def run_now(site_id):
    svc = service()
    site = owned_site(svc, site_id)
    try:
        run = svc.start(site.id, trigger_type="manual", reason=form_reason())
        flash_run(f"Run {run.id} started.", "success", run)
    except AppError as e:
        flash(e.message, "error")
    return redirect(url_for("web.site_automation", site_id=site.id))


@bp.post("/runs/<int:run_id>/<any(pause, resume, cancel):action>")
@login_required
def control(run_id, action):
    svc = service()
    run = owned_run(svc, run_id)
    try:
        getattr(svc, action)(run.id, reason=form_reason())
        flash_run(f"Run {run.id} {dict(pause='paused', resume='resumed', cancel='cancelled')[action]}.", "success", run)
    except AppError as e:
        db.session.rollback()
        db.session.refresh(run)
        flash_run(e.message, "error", run)
    target = request.form.get("next")
    if target == "run":
        return redirect(url_for("web.run_detail", run_id=run.id))
    return redirect(url_for("web.site_automation", site_id=run.site_id))


# -- runs -------------------------------------------------------------------------------------
LOG_UNAVAILABLE = "Run log unavailable: object storage unreachable. Try again in a moment."


@bp.get("/runs/<int:run_id>")
@login_required
def run_detail(run_id):
    svc = service()
    run = owned_run(svc, run_id)
    site = db.session.get(Site, run.site_id)
    rl = log_of(run)
    q = (request.args.get("q") or "").strip()[:200]
    window = None
    pruned = pruned_message(run) if run.files_pruned_at else None
    unavailable, log_next = None, 0
    if pruned:
        lines, window = [], {"first": 1, "total": 0}
    else:
        try:
            if q:
                needle = q.lower()
                lines = [ln for ln in rl.tail(5000) if needle in ln.lower()]
            else:
                # `?before=N` pages backwards without JavaScript; the page's "Load earlier" button
                # uses the API's `before` parameter for the same window.
                before = request.args.get("before", type=int)
                if before and before > 1:
                    first, lines = rl.read_before(before, RUN_PAGE_LINES)
                    window = {"first": first, "total": rl.count(), "paged": True}
                else:
                    lines = rl.tail(RUN_PAGE_LINES)
                    window = snapshot.log_window(run, lines, rl)
            log_next = rl.count()
        except StoreError:
            # Older lines live in object storage: when it is unreachable the run's state (in the
            # database) is still worth showing; the logs API answers 503 for the same outage.
            unavailable = LOG_UNAVAILABLE
            lines, window = [], {"first": 1, "total": 0}
    failed_page = failed_page_arg()
    snap = snapshot.run_snapshot(svc, run)
    return render_template("run.html", snap=snap, run=run, site=site, lines=lines, q=q, window=window, pruned=pruned,
                           log_unavailable=unavailable, log_next=log_next, live_version=snapshot.version(snap),
                           page_lines=RUN_PAGE_LINES, **failed_context(svc, run, failed_page))


def failed_page_arg():
    return max(1, min(request.args.get("failed_page", 1, type=int) or 1, 100_000))


def failed_context(svc, run, page):
    return {"failed_page": page, "failed_per_page": FAILED_PER_PAGE,
            "failed_items": svc.failed_items(run, page, FAILED_PER_PAGE)}


@bp.post("/runs/<int:run_id>/retry_failed")
@login_required
def retry_failed(run_id):
    svc = service()
    run = owned_run(svc, run_id)
    try:
        new = svc.retry_failed(run.id)
    except AppError as e:
        flash(e.message, "error")
        return redirect(url_for("web.run_detail", run_id=run.id))
    flash_run(f"Run {new.id} started: it retries the failed items of run {run.id}.", "success", new)
    return redirect(url_for("web.run_detail", run_id=new.id))


@bp.get("/runs/<int:run_id>/log.txt")
@login_required
def run_log(run_id):
    svc = service()
    run = owned_run(svc, run_id)
    if run.files_pruned_at:
        return pruned_message(run), 410, {"Content-Type": "text/plain; charset=utf-8"}
    rl = log_of(run)
    headers = {"Content-Disposition": f'attachment; filename="run-{run.id}.log"', "Cache-Control": "no-cache"}
    path = getattr(rl, "path", None)
    if path is not None:  # the file layout: served by the file, as before
        if not Path(path).is_file():
            return "", 200, {"Content-Type": "text/plain; charset=utf-8", **headers}
        return send_file(path, mimetype="text/plain", as_attachment=True, download_name=f"run-{run.id}.log",
                         max_age=0)
    # Object storage: segments then the live stream, streamed in order, never whole in memory.
    return Response(stream_with_context(rl.iter_bytes()), mimetype="text/plain", headers=headers)


# -- keywords and what the pipeline made ------------------------------------------------------------
validation.BIG_BODY_ENDPOINTS.add("web.keywords")  # a pasted or uploaded import: IMPORT_MAX_BYTES


@bp.route("/sites/<int:site_id>/keywords", methods=["GET", "POST"])
@login_required
def keywords(site_id):
    svc = service()
    site = owned_site(svc, site_id)
    report, import_error = None, None
    status = 200
    if request.method == "POST":
        try:
            upload = request.files.get("file")
            if upload and upload.filename:
                try:
                    text = upload.read().decode("utf-8-sig")
                except UnicodeDecodeError:
                    raise AppError("The file must be UTF-8 CSV text.")
            else:
                text = request.form.get("keywords", "")
            if not text.strip():
                raise AppError("Paste keywords (one per line) or choose a CSV file.")
            imports.refuse_if_busy(site)
            rows = estimate_rows(text)
            if rows > current_app.config["IMPORT_SYNC_MAX_ROWS"]:
                # Too big for the request (gevent: it would hold every other request of the
                # process): a background job, followed by the progress bar below.
                imp = imports.start(site, text.encode(), "csv", rows, f"user:{current_user.email}")
                flash(f"Import {imp.id} started in the background ({rows:,} rows).", "success")
                return redirect(url_for("web.keywords", site_id=site.id))
            report = import_rows(site, parse_csv(text), actor=f"user:{current_user.email}")
            flash(f"Imported {report['created']} keywords ({report['duplicates']} duplicates skipped, "
                  f"{len(report['errors'])} invalid rows).", "success" if not report["errors"] else "warning")
        except AppError as e:
            db.session.rollback()
            import_error, status = e.message, e.status if e.status in (400, 409) else 400
    tab = request.args.get("tab", "keywords")
    if tab not in TABS:
        tab = "keywords"
    model, _label = TABS[tab]
    try:
        page = max(1, min(int(request.args.get("page", 1)), 100_000))
    except ValueError:
        page = 1
    base = select(model).where(model.site_id == site.id, model.account_id == current_user.account_id)
    total = db.session.execute(select(func.count()).select_from(base.with_only_columns(model.id).subquery())).scalar()
    items = [] if (page - 1) * PER_PAGE >= total else db.session.execute(
        base.order_by(model.id.desc()).offset((page - 1) * PER_PAGE).limit(PER_PAGE)).scalars().all()
    counts = {name: db.session.execute(select(func.count()).select_from(m).where(m.site_id == site.id)).scalar()
              for name, (m, _) in TABS.items()}
    return render_template("keywords.html", site=site, tab=tab, tabs=TABS, items=items, total=total, page=page,
                           pages=max(1, -(-total // PER_PAGE)), counts=counts, report=report,
                           import_error=import_error, imp=imports.latest_for(site.id)), status


@bp.get("/sites/<int:site_id>/imports/<int(max=2147483647):import_id>")
@login_required
def keyword_import(site_id, import_id):
    """The progress bar of a background import (htmx polls it while it runs)."""
    site = owned_site(service(), site_id)
    try:
        imp = imports.get(current_user.account_id, import_id)
    except AppError:
        abort(404)
    if imp.site_id != site.id:
        abort(404)
    return render_template("partials/import_progress.html", imp=imp)


@bp.get("/sites/<int:site_id>/content/<int(max=2147483647):content_id>")
@login_required
def article(site_id, content_id):
    svc = service()
    site = owned_site(svc, site_id)
    content = db.session.execute(select(Content).where(Content.id == content_id, Content.site_id == site.id,
                                                       Content.account_id == current_user.account_id)).scalar_one_or_none()
    if content is None:
        abort(404)
    return render_template("article.html", site=site, content=content)


@bp.get("/sites/<int:site_id>/images/<int(max=2147483647):image_id>")
@login_required
def image(site_id, image_id):
    """One generated image full size, captioned with its article and role."""
    svc = service()
    site = owned_site(svc, site_id)
    img = db.session.execute(select(Image).where(Image.id == image_id, Image.site_id == site.id,
                                                 Image.account_id == current_user.account_id)).scalar_one_or_none()
    if img is None:
        abort(404)
    return render_template("image.html", site=site, image=img, content=img.content)


@bp.get("/favicon.ico")
def favicon():
    """Browsers ask for /favicon.ico on every page that names none (JSON, the API docs): answer it
    from static/, not with a 404 per page view."""
    return current_app.send_static_file("favicon.ico"), 200, {"Cache-Control": "public, max-age=86400"}
