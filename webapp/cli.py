"""CLI commands of SPEC §7. Bad input: one line on stderr and exit code 1, never a traceback."""
import sys
from pathlib import Path

import click
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from .extensions import db
from .models import Account, ApiToken, Site, User


def fail(message):
    click.echo(f"Error: {message}", err=True)
    raise SystemExit(1)


def _int(value, name, minimum=None):
    try:
        n = int(str(value).strip())
    except ValueError:
        fail(f"{name} must be an integer, got {value!r}")
    if minimum is not None and n < minimum:
        fail(f"{name} must be >= {minimum}")
    return n


def _account(name):
    acc = db.session.execute(select(Account).where(Account.name == name)).scalar_one_or_none()
    if acc is None:
        fail(f"unknown account {name!r}")
    return acc


def _user(email):
    user = db.session.execute(select(User).where(User.email == email.strip().lower())).scalar_one_or_none()
    if user is None:
        fail(f"unknown user {email!r}")
    return user


def init_app(app):
    @app.cli.command("init-db")
    def init_db():
        """Create or upgrade the database schema to the latest migration."""
        from flask_migrate import upgrade
        upgrade()
        click.echo("Database is at the latest schema.")

    @app.cli.command("create-account")
    @click.argument("name")
    @click.option("--credits", "credits_", default="0", show_default=True)
    def create_account(name, credits_):
        """Create an account with a credit balance."""
        name = name.strip()
        if not name or len(name) > 120:
            fail("account name must be 1-120 characters")
        credits_ = _int(credits_, "--credits", minimum=0)
        acc = Account(name=name, credits=0)
        db.session.add(acc)
        try:
            db.session.flush()
        except IntegrityError:
            db.session.rollback()
            fail(f"account {name!r} already exists")
        if credits_:
            from .automation.billing import top_up
            top_up(acc, credits_, reason="initial credits")
        db.session.commit()
        click.echo(f"Created account {name!r} (id {acc.id}) with {credits_} credits.")
        click.echo(acc.id)

    @app.cli.command("add-credits")
    @click.argument("account")
    @click.argument("amount")
    def add_credits(account, amount):
        """Top up an account's credits."""
        amount = _int(amount, "AMOUNT", minimum=1)
        from .automation.billing import top_up
        balance = top_up(_account(account), amount)
        db.session.commit()
        click.echo(f"Balance is now {balance}.")

    @app.cli.command("set-account-limits")
    @click.argument("account")
    @click.option("--max-active-runs", default=None, help="runs active at once; more wait as queued ('none' = the default)")
    @click.option("--max-keywords-per-site", default=None, help="keywords one site may hold ('none' = the default)")
    @click.option("--weight", default=None, help="share of the workers when accounts compete (default 1)")
    def set_account_limits(account, max_active_runs, max_keywords_per_site, weight):
        """Set an account's limits (unset options keep their value; 'none' = the environment's default)."""
        from . import audit
        acc = _account(account)
        changes = {}
        for opt, value, attr in (("--max-active-runs", max_active_runs, "max_active_runs"),
                                 ("--max-keywords-per-site", max_keywords_per_site, "max_keywords_per_site")):
            if value is not None:
                changes[attr] = None if value.strip().lower() == "none" else _int(value, opt, minimum=1)
        if weight is not None:
            try:
                w = float(weight)
            except ValueError:
                fail(f"--weight must be a number, got {weight!r}")
            if not (0.01 <= w <= 1000):
                fail("--weight must be between 0.01 and 1000")
            changes["weight"] = w
        for attr, value in changes.items():
            setattr(acc, attr, value)
        if changes:
            audit.record(acc.id, "cli", "account.limits", **changes)
        db.session.commit()
        from .automation import dispatch, limits
        from .redis_conn import get_redis
        try:
            dispatch.set_weight(get_redis(), acc.id, acc.weight)
            limits.promote(acc.id)  # a raised limit starts queued runs at once
        except Exception as e:  # redis down: the stale check promotes within a minute
            click.echo(f"warning: limits saved; queued runs start with the next check ({e.__class__.__name__})", err=True)
        click.echo(f"Account {acc.name!r}: max_active_runs={acc.max_active_runs or 'default'}, "
                   f"max_keywords_per_site={acc.max_keywords_per_site or 'default'}, weight={acc.weight:g}.")

    @app.cli.command("prune")
    @click.option("--older-than", "older_than", required=True, help="days since a run ended")
    @click.option("--dry-run", is_flag=True, help="report what would be deleted, delete nothing")
    def prune_cmd(older_than, dry_run):
        """Delete the logs and images of runs ended more than DAYS ago (run records stay)."""
        from .automation.retention import prune
        from .storage import StoreError
        days = _int(older_than, "--older-than", minimum=1)
        try:
            report = prune(days, dry_run=dry_run)
        except StoreError as e:
            fail(str(e))
        verb = "would delete" if dry_run else "deleted"
        click.echo(f"Runs ended more than {days} days ago: {report['runs']}; {verb} {report['objects']} objects "
                   f"({report['images']} images, {report['bytes']} bytes of logs).")

    @app.cli.command("create-user")
    @click.argument("email")
    @click.option("--password", required=True)
    @click.option("--account", "account_name", required=True)
    @click.option("--role", default=None, help="owner | operator | viewer (default: owner for the account's "
                                               "first user, operator after)")
    def create_user(email, password, account_name, role):
        """Create a user in an account."""
        from . import audit, team
        from .errors import AppError
        email = email.strip().lower()
        if "@" not in email or len(email) > 255:
            fail(f"invalid email {email!r}")
        if len(password) < 8:
            fail("password must be at least 8 characters")
        if role is not None and role not in ("owner", "operator", "viewer"):
            fail(f"role must be owner, operator or viewer, got {role!r}")
        acc = _account(account_name)
        try:
            user = team.new_user(acc.id, email, password, role)
            audit.record(acc.id, "cli", "user.create", target=user.email, role=user.role)
            db.session.commit()
        except (AppError, IntegrityError):
            db.session.rollback()
            fail(f"a user with email {email!r} already exists")
        click.echo(f"Created user {email} ({user.role}) in account {acc.name!r}.")

    @app.cli.command("set-role")
    @click.argument("email")
    @click.argument("role")
    def set_role(email, role):
        """Change a user's role: owner, operator or viewer."""
        from . import team
        from .errors import AppError
        if role not in ("owner", "operator", "viewer"):
            fail(f"role must be owner, operator or viewer, got {role!r}")
        try:
            user = team.set_role_cli(email, role)
        except AppError as e:
            db.session.rollback()
            fail(e.message)
        click.echo(f"{user.email} is now a {user.role}.")

    @app.cli.command("create-site")
    @click.argument("name")
    @click.option("--account", "account_name", required=True)
    @click.option("--domain", default=None)
    @click.option("--timezone", "tz", default="UTC", show_default=True)
    def create_site(name, account_name, domain, tz):
        """Create a site; prints its id alone on the last line."""
        from .sites import create_site as _create
        from .errors import AppError
        acc = _account(account_name)
        try:
            site = _create(acc.id, name, domain, tz)
        except AppError as e:
            fail(e.message)
        click.echo(f"Created site {site.name!r} in account {acc.name!r}.")
        click.echo(site.id)

    @app.cli.command("create-token")
    @click.argument("email")
    @click.option("--name", default="cli")
    def create_token(email, name):
        """Issue an API token; prints it alone on the last line (only shown once)."""
        user = db.session.execute(select(User).where(User.email == email.strip().lower())).scalar_one_or_none()
        if user is None:
            fail(f"unknown user {email!r}")
        _tok, raw = ApiToken.issue(user, name=name)
        db.session.commit()
        click.echo(f"Token for {user.email} (store it now; it is not shown again):")
        click.echo(raw)

    @app.cli.command("logout-user")
    @click.argument("email")
    @click.option("--revoke-tokens", is_flag=True, help="also revoke the user's API tokens")
    def logout_user_cmd(email, revoke_tokens):
        """End every browser session of a user at once (and optionally their API tokens)."""
        from .models.base import utcnow
        from .security import end_sessions
        user = _user(email)
        end_sessions(user, commit=False)
        revoked = 0
        if revoke_tokens:
            revoked = db.session.execute(db.update(ApiToken).where(ApiToken.user_id == user.id,
                                                                   ApiToken.revoked_at.is_(None))
                                         .values(revoked_at=utcnow())).rowcount
        db.session.commit()
        click.echo(f"Ended all sessions of {user.email}" + (f"; revoked {revoked} API tokens." if revoke_tokens else "."))

    @app.cli.command("set-password")
    @click.argument("email")
    @click.option("--password", help="the new password (8-255 characters); visible in ps and the shell's "
                                     "history: without it (and --password-stdin) it is asked for, hidden")
    @click.option("--password-stdin", is_flag=True, help="read the new password from the first line of stdin")
    def set_password(email, password, password_stdin):
        """Set a user's password; every browser session of theirs ends (API tokens are kept)."""
        from . import team
        from .errors import AppError
        if password is not None and password_stdin:
            fail("give --password or --password-stdin, not both")
        user = _user(email)  # an unknown user fails before anything is asked
        if password_stdin:
            line = sys.stdin.readline()
            if not line:
                fail("--password-stdin: nothing on stdin")
            password = line[:-1] if line.endswith("\n") else line  # only the line's end, not its spaces
            password = password[:-1] if password.endswith("\r") else password
        elif password is None:
            # Hidden and asked twice: a typo cannot lock the user out, nothing lands in ps or history.
            # Compared here rather than by click's confirmation_prompt, which asks again on a
            # mismatch: a script piping two lines gets one error line and exit 1 instead.
            try:
                password = click.prompt("New password", hide_input=True, err=True)
                again = click.prompt("New password again", hide_input=True, err=True)
            except click.Abort:
                fail("no password given")
            if password != again:
                fail("the two passwords do not match; nothing changed")
        try:
            team.change_password(user, password, actor="cli")
        except AppError as e:
            db.session.rollback()
            errors = getattr(e, "errors", None)
            fail("password " + ", ".join(errors.values()) if errors else e.message)
        click.echo(f"Password of {user.email} changed; their sessions were ended.")

    @app.cli.command("revoke-token")
    @click.argument("token_id")
    def revoke_token(token_id):
        """Revoke an API token by id."""
        token_id = _int(token_id, "TOKEN_ID", minimum=1)
        from .models.base import utcnow
        tok = db.session.get(ApiToken, token_id)
        if tok is None:
            fail(f"unknown token id {token_id}")
        tok.revoked_at = utcnow()
        db.session.commit()
        click.echo(f"Revoked token {token_id}.")

    @app.cli.command("import-keywords")
    @click.argument("site_id")
    @click.argument("file")
    def import_keywords(site_id, file):
        """Import keywords from a CSV (keyword[,volume,difficulty])."""
        site_id = _int(site_id, "SITE_ID", minimum=1)
        from .planner import import_rows, parse_csv
        from .errors import AppError
        site = db.session.get(Site, site_id)
        if site is None:
            fail(f"unknown site id {site_id}")
        try:
            text = Path(file).read_bytes().decode("utf-8-sig")
        except OSError as e:
            fail(f"cannot read {file}: {e.strerror or e}")
        except UnicodeDecodeError:
            fail(f"{file} is not UTF-8 text")
        try:
            rows = parse_csv(text)
            report = import_rows(site, rows, actor="cli")
        except AppError as e:
            fail(e.message)
        click.echo(f"Imported {report['created']} keywords, skipped {report['duplicates']} duplicates, "
                   f"{len(report['errors'])} invalid rows.")
        for err in report["errors"][:20]:
            click.echo(f"  row {err['row']}: {err['error']}")

    @app.cli.command("seed-demo")
    @click.option("--if-empty", is_flag=True, help="do nothing when the database already has users")
    def seed_demo(if_empty):
        """Create the demo account, login and site with keywords."""
        from .demo import DEMO_EMAIL, DEMO_PASSWORD, seed
        if if_empty and db.session.execute(select(User.id).limit(1)).first():
            click.echo("Database already has users; demo not seeded.")
            return
        site = seed()
        click.echo(f"Demo login: {DEMO_EMAIL} / {DEMO_PASSWORD} (site {site.id}: {site.name})")
