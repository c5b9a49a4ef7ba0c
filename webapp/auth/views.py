from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, g, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user
from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, Length

from ..access import needs
from ..security import limiter, login_throttle, throttle_address
from .tokens import check_credentials

bp = Blueprint("auth", __name__)


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=255)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=255)])


def _safe_next(target):
    # Only same-site relative paths: never an open redirect. Browsers read a backslash as a
    # slash ("/\\evil" is "//evil"), and control characters (CR/LF) cannot go in a header.
    if (target and target.startswith("/") and not target.startswith("//") and "\\" not in target
            and target.isprintable() and not urlsplit(target).netloc):
        return target
    return url_for("web.dashboard")


@bp.route("/login", methods=["GET", "POST"])
@login_throttle
def login():
    if current_user.is_authenticated:
        return redirect(url_for("web.dashboard"))
    form = LoginForm()
    status = 200
    if form.validate_on_submit():
        user = check_credentials(form.email.data, form.password.data)
        if user:
            login_user(user)
            return redirect(_safe_next(request.args.get("next")))
        form.password.errors.append("Invalid email or password.")
        status = 401
    elif request.method == "POST":
        status = 400
    return render_template("login.html", form=form), status


@bp.route("/logout", methods=["GET", "POST"])
@login_required
def logout():
    # GET only asks: a link or a typed URL must not change state (CSRF-safe logout).
    if request.method == "GET":
        return render_template("logout.html")
    # Ends this user's sessions everywhere, not just this cookie: a copy saved earlier
    # (another tab, a stolen cookie) stops working too.
    from ..security import end_sessions
    end_sessions(current_user._get_current_object())
    logout_user()
    flash("You have been logged out.", "info")
    return redirect(url_for("auth.login"))


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
    from .. import team
    from ..errors import AppError
    from ..extensions import db
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
