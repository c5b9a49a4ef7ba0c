"""Extension singletons, bound to an app in create_app (no app at import time)."""
import click
from flask_login import LoginManager
from flask_sock import Sock
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import MetaData

# Stable constraint names so Alembic migrations are the same on SQLite and PostgreSQL.
metadata = MetaData(naming_convention={
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})


class _MigrateConfig:
    """What Flask-Migrate keeps in app.extensions["migrate"], made on first use."""

    def __init__(self, db, options):
        self._db, self._options, self._real = db, options, None

    def __getattr__(self, name):  # only for what this object does not have itself
        if self._real is None:
            import flask_migrate
            m = flask_migrate.Migrate(db=self._db, **self._options)
            self._real = flask_migrate._MigrateConfig(m, self._db, **m.alembic_ctx_kwargs)
        return getattr(self._real, name)


class _DbCommands(click.Group):
    """`flask db ...`: Flask-Migrate's command group, imported when it is run."""

    def __init__(self):
        super().__init__("db", help="Perform database migrations.")

    def make_context(self, info_name, args, parent=None, **extra):
        from flask_migrate.cli import db as commands
        return commands.make_context(info_name, args, parent=parent, **extra)


class LazyMigrate:
    """Flask-Migrate registered without importing it. Importing it loads alembic (~0.1 s of
    CPU), which every web worker, pipeline worker, scheduler and CLI call paid at start; only
    `flask db ...`, `init-db` and the test suite's migration use it."""

    def init_app(self, app, db, **options):
        app.extensions["migrate"] = _MigrateConfig(db, options)
        app.cli.add_command(_DbCommands())


db = SQLAlchemy(metadata=metadata)
migrate = LazyMigrate()
login_manager = LoginManager()
csrf = CSRFProtect()
sock = Sock()
