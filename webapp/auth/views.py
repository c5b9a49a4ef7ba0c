from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user
from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, Length

from ..security import login_throttle
from .tokens import check_credentials

bp = Blueprint("auth", __name__)


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=255)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=255)])


def throttled_login(message):
    """The login page with the throttle's message (security.py answers 429 with it)."""
    form = LoginForm()
    form.email.data = request.form.get("email", "")[:255]
    return render_template("login.html", form=form, throttled=message)


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
