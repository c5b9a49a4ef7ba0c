"""The review page (/sites/<id>/review): articles in review with their images; approve or
reject one or many. Plain forms (no JavaScript needed); static/js/review.js adds keys."""
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from ..automation.service import AutomationService
from ..errors import NotFound
from ..validation import is_ascii_digits
from .review import ReviewError, ReviewService

bp = Blueprint("writer", __name__)
PER_PAGE = 20


def _page_number(raw):
    try:
        return max(1, min(int(raw or 1), 100_000))
    except ValueError:
        return 1


def render(site, page, status=200, errors=None, form=None):
    svc = ReviewService(current_user.account_id, current_user.email)
    items, total = svc.queue(site.id, page, PER_PAGE)
    if not items and page > 1:  # the last page emptied by the decision just made
        page = max(1, -(-total // PER_PAGE))
        items, total = svc.queue(site.id, page, PER_PAGE)
    return render_template("writer/review.html", site=site, items=items, total=total, page=page,
                           pages=max(1, -(-total // PER_PAGE)), errors=errors or {},
                           form=form if form is not None else request.args), status


@bp.route("/sites/<int:site_id>/review", methods=["GET", "POST"])
@login_required
def review(site_id):
    try:
        site = AutomationService(current_user.account_id).site(site_id)
    except NotFound:
        abort(404)
    page = _page_number(request.values.get("page"))
    if request.method == "GET":
        return render(site, page)
    act = request.form.get("act", "")
    action, _, target = act.partition(":")
    regenerate = action == "rewrite"  # "Reject and rewrite": back to Tasks → Content with the note
    if regenerate:
        action = "reject"
    svc = ReviewService(current_user.account_id, current_user.email)
    if target == "selected":
        # ASCII digits only (str.isdigit() also takes e.g. Arabic-Indic digits)
        ids = [int(i) for i in request.form.getlist("ids") if is_ascii_digits(i) and len(i) <= 12]
        note, note_field = request.form.get("note"), "note"
        if not ids:
            return render(site, page, 400, {"ids": "Select at least one article."}, request.form)
    elif is_ascii_digits(target) and len(target) <= 12:
        ids = [int(target)]
        note, note_field = request.form.get(f"note_{target}"), f"note_{target}"
    else:
        return render(site, page, 400, {"form": "Choose Approve or Reject."}, request.form)
    try:
        done = svc.bulk(ids, action, note, site_id=site.id, regenerate=regenerate)
    except ReviewError as e:
        errors = dict(e.errors)
        if "note" in errors:
            errors[note_field] = errors.pop("note")
        if "content" in errors or "ids" in errors or "action" in errors:
            errors["form"] = e.message
        return render(site, page, e.status, errors, request.form)
    verb = "approved" if action == "approve" else ("rejected: the next run rewrites" + (" them" if len(done) != 1 else " it")
                                                   if regenerate else "rejected")
    flash(f"{len(done)} article{'s' if len(done) != 1 else ''} {verb}.", "success")
    return redirect(url_for("writer.review", site_id=site.id, page=page))


def init_app(app):
    app.register_blueprint(bp)
