"""Pages: the webhook settings of a site (a section of its automation page and a page of
its own with deliveries and attempts), and a user's email notification opt-in."""
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from ..access import needs
from ..errors import AppError, NotFound, field_errors_of
from . import mail
from .webhooks import WEBHOOK_EVENTS, FieldErrors, WebhookService

bp = Blueprint("notify", __name__)


def service():
    return WebhookService(current_user.account_id, actor=f"user:{current_user.email}")


def _site(svc, site_id):
    try:
        return svc.site(site_id)
    except NotFound:
        abort(404)


def webhook_settings(site):
    """For the automation page's section: this account's webhooks of `site`."""
    return service().list(site.id)


def page(svc, site, status=200, errors=None, form=None, created=None):
    hooks = svc.list(site.id)
    deliveries = {w.id: svc.deliveries(site.id, w.id, 1, 10)[0] for w in hooks}
    return render_template("notify/webhooks.html", site=site, webhooks=hooks, deliveries=deliveries,
                           events=WEBHOOK_EVENTS, errors=errors or {}, form=form or {}, created=created), status


@bp.get("/sites/<int:site_id>/webhooks")
@login_required
def webhooks(site_id):
    svc = service()
    return page(svc, _site(svc, site_id))


@bp.post("/sites/<int:site_id>/webhooks")
@login_required
def create(site_id):
    svc = service()
    site = _site(svc, site_id)
    data = {"url": request.form.get("url", ""), "events": request.form.getlist("events")}
    try:
        wh = svc.create(site.id, data)
    except FieldErrors as e:
        return page(svc, site, 400, errors=e.errors, form=data)
    except AppError as e:  # e.g. the same URL and events again: next to the URL field
        return page(svc, site, e.status, errors=field_errors_of(e), form=data)
    # Rendered, not redirected: the secret is shown this once and never put in a cookie.
    return page(svc, site, 201, created=wh)


@bp.post("/sites/<int:site_id>/webhooks/<int:webhook_id>/delete")
@login_required
def delete(site_id, webhook_id):
    svc = service()
    site = _site(svc, site_id)
    try:
        svc.delete(site.id, webhook_id)
    except NotFound:
        abort(404)
    flash("Webhook deleted.", "success")
    if request.form.get("next") == "automation":
        return redirect(url_for("web.site_automation", site_id=site.id) + "#webhooks")
    return redirect(url_for("notify.webhooks", site_id=site.id))


@bp.post("/sites/<int:site_id>/webhooks/<int:webhook_id>/test")
@login_required
def send_test(site_id, webhook_id):
    svc = service()
    site = _site(svc, site_id)
    try:
        svc.send_test(site.id, webhook_id)
    except NotFound:
        abort(404)
    except AppError as e:
        flash(e.message, "error")
        return redirect(url_for("notify.webhooks", site_id=site.id))
    flash("Test event queued; its delivery appears below.", "success")
    return redirect(url_for("notify.webhooks", site_id=site.id) + f"#webhook-{webhook_id}")


@bp.route("/settings/notifications", methods=["GET", "POST"])
@login_required
@needs("viewer")  # a user's own email choice: every role may set it
def notifications():
    if request.method == "POST":
        try:
            mail.set_preferences(current_user, request.form.getlist("email_events"))
        except FieldErrors as e:
            flash(e.message, "error")
            return redirect(url_for("notify.notifications"))
        flash("Notification settings saved.", "success")
        return redirect(url_for("notify.notifications"))
    return render_template("notify/settings.html", chosen=mail.preferences(current_user), events=mail.EMAIL_EVENTS,
                           verbs=mail.VERBS, enabled=mail.mail_enabled())


def init_app(app):
    app.register_blueprint(bp)
    app.jinja_env.globals["webhook_settings"] = webhook_settings
    app.jinja_env.globals["webhook_events"] = WEBHOOK_EVENTS
