"""Automation Console: `create_app` wires config, extensions and each subpackage."""
import os

from flask import Flask


def create_app(test_config=None):
    app = Flask(
        __name__,
        instance_path=os.environ.get("INSTANCE_PATH") or os.path.join(os.getcwd(), "instance"),
        template_folder="../templates",
        static_folder="../static",
    )
    from .security import make_private
    make_private(app.instance_path)
    from .config import load_config
    app.config.update(load_config(app.instance_path))
    if test_config:
        app.config.update(test_config)
    from . import logging_setup
    logging_setup.init_app(app)  # LOG_FORMAT, request ids (webapp/logging_setup.py)

    from .extensions import csrf, db, login_manager, migrate, sock
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        # Web, worker and scheduler share one SQLite file: wait for the write lock instead
        # of failing, and let readers work while a worker writes (WAL).
        opts = app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {})
        opts.setdefault("connect_args", {})["timeout"] = 30
    db.init_app(app)
    _sqlite_pragmas()
    migrate.init_app(app, db, render_as_batch=True, directory=os.path.join(os.path.dirname(__file__), "..", "migrations"))
    csrf.init_app(app)
    sock.init_app(app)
    login_manager.init_app(app)
    from . import access, audit, security, validation
    validation.install(app)  # before any route: the strict <int:…> converter
    security.init_app(app)
    access.init_app(app)
    audit.init_app(app)

    from . import auth, api, cli, health, media, metrics, notify, ops, web
    from .automation import hooks
    from .writer import views as writer_views
    # GET /metrics and the request counters (webapp/metrics.py); it reads the shared state
    # through ops and counts run events, handed in here so that it imports neither.
    metrics.init_app(app, shared_state=ops)
    hooks.subscribe(metrics.on_run_event)
    hooks.subscribe(logging_setup.log_run_event)  # one log line per run event, web or worker
    auth.init_app(app)
    api.init_app(app)
    web.init_app(app)
    media.init_app(app)
    health.init_app(app)
    notify.init_app(app)
    # A run that ends frees a slot of its account's limit: the next queued run starts.
    from .automation import hooks, limits
    hooks.subscribe(limits.on_run_event)
    writer_views.init_app(app)
    cli.init_app(app)
    return app


def _sqlite_pragmas():
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if getattr(_sqlite_pragmas, "done", False):
        return
    _sqlite_pragmas.done = True

    @event.listens_for(Engine, "connect")
    def _on_connect(dbapi_conn, _record):
        if type(dbapi_conn).__module__.startswith("sqlite3"):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
