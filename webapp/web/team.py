"""Pages for sites (create, edit, delete), users (owners), API tokens, your password and the audit log.
Thin: webapp/team.py does the work; roles are enforced centrally (webapp/access.py), and the
`needs` marks say where a page differs from the default (operator for changes)."""
from zoneinfo import available_timezones

from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user

from .. import audit, team
from ..access import has_role, needs
from ..errors import AppError, NotFound, field_errors_of, field_message, plain_message
from ..links import public_url
from ..extensions import db
from ..models import Site
from ..models.base import utcnow
from ..security import limiter, throttle_address
from ..sites import create_site
from .views import owned_site, service

bp = Blueprint("team_web", __name__)
AUDIT_PER_PAGE = 50
_ZONES = None


def zones():
    global _ZONES
    if _ZONES is None:
        _ZONES = sorted(z for z in available_timezones() if "/" in z and not z.startswith(("Etc/", "SystemV/"))) + ["UTC"]
    return _ZONES


def _errors_of(e):
    return field_errors_of(e)  # shown next to each field: no internal names in the message


def _require_owner():
    if not has_role(current_user, "owner"):
        abort(403, "This page needs the owner role.")


# -- sites -------------------------------------------------------------------------------------------
@bp.route("/sites/new", methods=["GET", "POST"])
@login_required
@needs("owner")
def new_site():
    _require_owner()
    form, errors = {"timezone": "UTC"}, {}
    if request.method == "POST":
        form = request.form
        try:
            site = create_site(current_user.account_id, form.get("name", ""), form.get("domain", "").strip() or None,
                               form.get("timezone") or "UTC")
            audit.record(current_user.account_id, team.actor_of(current_user), "site.create", site_id=site.id,
                         name=site.name)
            db.session.commit()
            flash(f"Site {site.name!r} created. Import keywords to start.", "success")
            return redirect(url_for("web.keywords", site_id=site.id))
        except AppError as e:
            db.session.rollback()
            errors = _errors_of(e)
    return render_template("site_form.html", site=None, form=form, errors=errors, zones=zones()), 400 if errors else 200


@bp.route("/sites/<int(max=2147483647):site_id>/edit", methods=["GET", "POST"])
@login_required
@needs("owner")
def edit_site(site_id):
    _require_owner()
    site = owned_site(service(), site_id)
    form, errors = {"name": site.name, "domain": site.domain or "", "timezone": site.timezone,
                    "monthly_budget": "" if site.monthly_budget is None else site.monthly_budget}, {}
    if request.method == "POST":
        form = request.form
        try:
            team.update_site(current_user, site.id, {"name": form.get("name", ""), "domain": form.get("domain", "").strip() or None,
                                                     "timezone": form.get("timezone", ""),
                                                     "monthly_budget": form.get("monthly_budget", "").strip() or None})
            flash("Site saved.", "success")
            return redirect(url_for("web.site_automation", site_id=site.id))
        except AppError as e:
            db.session.rollback()
            errors = _errors_of(e)
    return render_template("site_form.html", site=site, form=form, errors=errors, zones=zones()), 400 if errors else 200


@bp.route("/sites/<int(max=2147483647):site_id>/delete", methods=["GET", "POST"])
@login_required
@needs("owner")
def delete_site(site_id):
    _require_owner()
    site = owned_site(service(), site_id)
    errors = {}
    if request.method == "POST":
        try:
            name = team.delete_site(current_user, site.id, request.form.get("confirm", ""))
            flash(f"Site {name!r} and everything of it was deleted.", "success")
            return redirect(url_for("web.dashboard"))
        except AppError as e:
            db.session.rollback()
            errors = _errors_of(e)
    return render_template("site_delete.html", site=site, errors=errors), 400 if errors else 200


# -- API tokens (every user: their own; owners: the account's) --------------------------------------
@bp.route("/tokens", methods=["GET", "POST"])
@login_required
@needs("viewer")
def tokens():
    errors, new_token, form = {}, None, {}
    if request.method == "POST":
        form = request.form
        try:
            tok, raw = team.create_token(current_user, form.get("name", ""), (form.get("expires_at") or "").strip() or None,
                                         form.get("scope", "full"))
            new_token = {"raw": raw, "name": tok.name}
            form = {}
        except AppError as e:
            db.session.rollback()
            errors = _errors_of(e)
    status = 400 if errors else (201 if new_token else 200)
    return render_template("tokens.html", tokens=team.visible_tokens(current_user), errors=errors, form=form,
                           new_token=new_token, now=utcnow()), status


@bp.post("/tokens/<int(max=2147483647):token_id>/revoke")
@login_required
@needs("viewer")
def revoke_token(token_id):
    try:
        tok = team.revoke_token(current_user, token_id)
    except NotFound:
        abort(404)
    flash(f"Token {tok.name!r} revoked.", "success")
    return redirect(url_for("team_web.tokens"))


# -- users (owners) ------------------------------------------------------------------------------------
@bp.get("/users")
@login_required
def users():
    _require_owner()
    return render_template("users.html", users=team.account_users(current_user.account_id), errors={}, invite=None,
                           form={})


@bp.post("/users/invite")
@login_required
@needs("owner")
def invite_user():
    form = request.form
    try:
        user, raw = team.invite(current_user, form.get("email", ""), form.get("role", "operator"))
    except AppError as e:
        db.session.rollback()
        return render_template("users.html", users=team.account_users(current_user.account_id),
                               errors=_errors_of(e), invite=None, form=form), 400
    # PUBLIC_URL, not the request's Host; the token in the fragment, which no browser sends
    # (so no access log or proxy ever records it).
    link = public_url("team_web.accept_invite", _fragment=raw)
    return render_template("users.html", users=team.account_users(current_user.account_id), errors={},
                           invite={"email": user.email, "link": link}, form={}), 201


@bp.post("/users/<int(max=2147483647):user_id>/role")
@login_required
@needs("owner")
def change_role(user_id):
    try:
        user = team.set_role(current_user, user_id, request.form.get("role", ""))
        flash(f"{user.email} is now a {user.role}.", "success")
    except NotFound:
        abort(404)
    except AppError as e:
        db.session.rollback()
        flash(plain_message(e), "error")
    return redirect(url_for("team_web.users"))


@bp.post("/users/<int(max=2147483647):user_id>/deactivate")
@login_required
@needs("owner")
def deactivate_user(user_id):
    try:
        user = team.deactivate(current_user, user_id)
        flash(f"{user.email} was deactivated: sessions ended, API tokens revoked.", "success")
    except NotFound:
        abort(404)
    except AppError as e:
        db.session.rollback()
        flash(plain_message(e), "error")
    return redirect(url_for("team_web.users"))


@bp.route("/invite", methods=["GET", "POST"])
@needs("viewer")
def accept_invite():
    """Invitation links are `/invite#TOKEN`: the page's script moves the token from the
    fragment into the form, and it arrives in the POST body, never in a URL."""
    if request.method == "GET":
        return render_template("set_password.html", user=None, errors={}, token=None, token_in_form=True)
    token = request.form.get("token", "").strip()
    return _invite_form(token, token_in_form=True)


@bp.route("/invite/<token>", methods=["GET", "POST"])
def set_password(token):
    """Links handed out before the fragment form (valid 7 days). The access log scrubs this
    path (webapp/logging_setup.py)."""
    return _invite_form(token, token_in_form=False)


def _invite_form(token, token_in_form):
    user = team.invited_user(token)
    if user is None:
        if token_in_form and request.method == "POST":
            return render_template("set_password.html", user=None, token=token, token_in_form=True, errors={
                "token": "This invitation is invalid, used or expired. Ask an owner for a new one."}), 404
        return render_template("error.html", code=404,
                               message="This invitation link is invalid, used or expired. Ask an owner for a new one."), 404
    errors = {}
    if request.method == "POST" and (not token_in_form or "password" in request.form):
        password, again = request.form.get("password", ""), request.form.get("password_again", "")
        if password != again:
            errors["password_again"] = "The two passwords differ."
        else:
            try:
                user = team.accept_invite(token, password)
                login_user(user)
                flash("Password set. Welcome!", "success")
                return redirect(url_for("web.dashboard"))
            except AppError as e:
                db.session.rollback()
                errors["password"] = field_message("password", e.message)
    return render_template("set_password.html", user=user, errors=errors, token=token if token_in_form else None,
                           token_in_form=token_in_form), 400 if errors else 200


# -- your password ------------------------------------------------------------------------------------
def _password_change_key():
    uid = current_user.get_id().partition(":")[0] if current_user.is_authenticated else throttle_address()
    return f"pwchange:{uid}"


@bp.route("/account/password", methods=["GET", "POST"])
@login_required
@needs("viewer")  # everyone changes their own password
@limiter.limit(lambda: current_app.config["LOGIN_RATE_LIMIT_EMAIL"], key_func=_password_change_key,
               methods=["POST"], deduct_when=lambda response: bool(g.get("wrong_current_password")))
def change_password():
    """The current password is required: a session left open is not the account. Every other
    session of the user ends; this browser is logged in again with the new generation. Wrong
    current passwords are limited per user like failed logins (a stolen cookie is no oracle)."""
    errors = {}
    if request.method == "POST":
        form = request.form
        user = current_user._get_current_object()
        if form.get("new_password", "") != form.get("new_password_again", ""):
            errors["new_password_again"] = "The two passwords differ."
        else:
            try:
                team.change_password(user, form.get("new_password", ""), form.get("current_password", ""))
                login_user(user)  # the new generation: this browser stays, every other session ends
                flash("Password changed. Your other sessions were ended.", "success")
                return redirect(url_for("web.dashboard"))
            except AppError as e:
                db.session.rollback()
                found = getattr(e, "errors", None) or {"new_password": e.message}
                errors = {"current_password": "This is not your current password."} \
                    if "current_password" in found else {}
                if "new_password" in found:
                    errors["new_password"] = f"The new password {found['new_password']}."
                g.wrong_current_password = "current_password" in errors
    return render_template("account_password.html", errors=errors), 400 if errors else 200


# -- audit log ------------------------------------------------------------------------------------------
@bp.get("/audit")
@login_required
def audit_log():
    args = request.args
    try:
        page = max(1, min(int(args.get("page") or 1), 100_000))
    except ValueError:
        page = 1
    site_id = args.get("site_id") or None
    site_id = int(site_id) if site_id and site_id.isascii() and site_id.isdigit() and len(site_id) < 10 else None
    actor, action = (args.get("actor") or "").strip()[:100] or None, (args.get("action") or "").strip()[:64] or None
    rows, total = audit.query(current_user.account_id, site_id=site_id, actor=actor, action=action, page=page,
                              limit=AUDIT_PER_PAGE)
    sites = {s.id: s for s in db.session.execute(db.select(Site).where(Site.account_id == current_user.account_id)).scalars()}
    return render_template("audit.html", rows=rows, total=total, page=page, pages=max(1, -(-total // AUDIT_PER_PAGE)),
                           sites=sites, filters={"site_id": site_id, "actor": actor or "", "action": action or ""})
