"""App factory, models and their constraints, migrations."""
import threading

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from webapp import create_app
from webapp.extensions import db
from webapp.models import AutomationRun, Keyword


def test_create_app_uses_test_config(app):
    assert app.testing
    assert app.config["SQLALCHEMY_DATABASE_URI"].startswith(("sqlite:///", "postgresql"))


def test_secret_key_generated_once_and_kept(tmp_path, monkeypatch):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path / "inst"))
    a = create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://"})
    b = create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://"})
    assert a.config["SECRET_KEY"] == b.config["SECRET_KEY"] and len(a.config["SECRET_KEY"]) == 64
    assert (tmp_path / "inst" / "secret_key").stat().st_mode & 0o077 == 0


def test_migrations_reach_head_with_every_table(app):
    names = set(inspect(db.engine).get_table_names())
    assert {"account", "user", "api_token", "site", "keyword", "cluster", "content_idea", "task", "content",
            "image", "automation_config", "automation_run", "ai_task_log", "credit_transaction",
            "run_event", "alembic_version"} <= names
    idx = {i["name"] for i in inspect(db.engine).get_indexes("automation_run")}
    assert "uq_run_one_active_per_site" in idx


def test_migrations_upgrade_empty_sqlite_db(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    app = create_app({"SQLALCHEMY_DATABASE_URI": uri, "SECRET_KEY": "x"})
    with app.app_context():
        from flask_migrate import downgrade, upgrade
        upgrade()
        assert "automation_run" in inspect(db.engine).get_table_names()
        downgrade(revision="base")
        assert "automation_run" not in inspect(db.engine).get_table_names()
        upgrade()
        assert "automation_run" in inspect(db.engine).get_table_names()


def test_one_active_run_per_site(factory):
    acc, _ = factory.account()
    site = factory.site(acc)
    db.session.add(AutomationRun(account_id=acc.id, site_id=site.id, status="running"))
    db.session.commit()
    db.session.add(AutomationRun(account_id=acc.id, site_id=site.id, status="paused"))
    with pytest.raises(IntegrityError):
        db.session.commit()
    db.session.rollback()
    # Finished runs do not count.
    db.session.add_all([AutomationRun(account_id=acc.id, site_id=site.id, status=s)
                        for s in ("completed", "failed", "cancelled", "completed")])
    db.session.commit()


def test_one_active_run_under_two_concurrent_inserts(factory, app):
    acc, _ = factory.account()
    site = factory.site(acc)
    acc_id, site_id = acc.id, site.id
    engine = create_engine(app.config["SQLALCHEMY_DATABASE_URI"], connect_args=(
        {"timeout": 30} if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite") else {}))
    barrier = threading.Barrier(2)
    outcomes = []

    def insert():
        with Session(engine) as s:
            s.add(AutomationRun(account_id=acc_id, site_id=site_id, status="running"))
            barrier.wait()
            try:
                s.commit()
                outcomes.append("ok")
            except IntegrityError:
                outcomes.append("refused")

    threads = [threading.Thread(target=insert) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    engine.dispose()
    assert sorted(outcomes) == ["ok", "refused"]
    assert db.session.execute(text("SELECT count(*) FROM automation_run")).scalar() == 1


def test_credits_cannot_go_negative(factory):
    acc, _ = factory.account(credits=5)
    acc.credits = -1
    with pytest.raises(IntegrityError):
        db.session.commit()
    db.session.rollback()


def test_keyword_unique_per_site(factory):
    acc, _ = factory.account()
    s1, s2 = factory.site(acc, "A"), factory.site(acc, "B")
    db.session.add_all([Keyword(account_id=acc.id, site_id=s1.id, keyword="x"),
                        Keyword(account_id=acc.id, site_id=s2.id, keyword="x")])
    db.session.commit()
    db.session.add(Keyword(account_id=acc.id, site_id=s1.id, keyword="x"))
    with pytest.raises(IntegrityError):
        db.session.commit()
    db.session.rollback()


def test_tenant_tables_carry_account_and_site(app):
    insp = inspect(db.engine)
    for table in ("keyword", "cluster", "content_idea", "task", "content", "image", "automation_config",
                  "automation_run", "ai_task_log", "run_event"):
        cols = {c["name"] for c in insp.get_columns(table)}
        assert {"account_id", "site_id"} <= cols, table
