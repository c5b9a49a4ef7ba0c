"""`make test` never touches a database it was not given for tests.

These run the suite itself (one small test that migrates, truncates and writes) in a child
pytest with a "precious" database in DATABASE_URL, and check that the database is untouched.
"""
import hashlib
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

pytestmark = pytest.mark.processes  # real processes (see pytest.ini)

ROOT = Path(__file__).resolve().parent.parent
INNER = "tests/test_foundation.py::test_credits_cannot_go_negative"


def _pytest(env, *args):
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TEST_DATABASE_URL")}
    base["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # none is needed: ~1.8 s less per child run
    return subprocess.run([sys.executable, "-m", "pytest", "-q", *args], cwd=ROOT,
                          env={**base, **env}, capture_output=True, text=True, timeout=300)


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_database_url_in_the_shell_is_never_touched(tmp_path):
    precious = tmp_path / "production.db"
    con = sqlite3.connect(precious)
    con.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("INSERT INTO customers (name) VALUES ('keep me')")
    con.commit()
    con.close()
    before = _digest(precious)
    out = _pytest({"DATABASE_URL": f"sqlite:///{precious}"}, INNER)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout
    assert _digest(precious) == before
    con = sqlite3.connect(precious)
    assert con.execute("SELECT name FROM customers").fetchall() == [("keep me",)]
    assert con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 1  # no tables added


def _pg_admin_url():
    url = os.environ.get("TEST_DATABASE_URL", "")
    return url if url.startswith("postgresql") else ""


@pytest.mark.skipif(not _pg_admin_url(), reason="PostgreSQL variant runs in the PostgreSQL suite (TEST_DATABASE_URL)")
def test_precious_postgres_database_is_refused_and_untouched():
    from sqlalchemy.engine import make_url
    test_url = make_url(_pg_admin_url())
    name = f"precious_{uuid.uuid4().hex[:8]}"
    inner_test = f"test_safety_{uuid.uuid4().hex[:8]}"  # the child suite's own, not ours
    admin = create_engine(test_url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
        c.execute(text(f'CREATE DATABASE "{inner_test}"'))
    url = test_url.set(database=name).render_as_string(hide_password=False)
    inner_url = test_url.set(database=inner_test).render_as_string(hide_password=False)
    eng = create_engine(url)
    try:
        with eng.begin() as c:
            c.execute(text("CREATE TABLE customers (id serial PRIMARY KEY, name text)"))
            c.execute(text("INSERT INTO customers (name) VALUES ('keep me')"))
        # 1) As DATABASE_URL next to a test URL: ignored, the suite uses its own database.
        out = _pytest({"DATABASE_URL": url, "TEST_DATABASE_URL": inner_url}, INNER)
        assert out.returncode == 0, out.stdout + out.stderr
        # 2) Given as the test database by mistake: refused with one clear line, nothing dropped.
        out = _pytest({"TEST_DATABASE_URL": url}, INNER)
        assert out.returncode != 0
        assert "must start or end with 'test'" in (out.stdout + out.stderr)
        with eng.connect() as c:
            assert c.execute(text("SELECT name FROM customers")).scalars().all() == ["keep me"]
            tables = c.execute(text("SELECT tablename FROM pg_tables WHERE schemaname='public'")).scalars().all()
            assert tables == ["customers"]
    finally:
        eng.dispose()
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            c.execute(text(f'DROP DATABASE IF EXISTS "{inner_test}" WITH (FORCE)'))
        admin.dispose()
