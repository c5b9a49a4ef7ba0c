"""Prometheus metrics: the one module the rest of the app calls (docs/OPERATIONS.md).

Counters and histograms are written where things happen (web requests, RQ jobs) with the
official prometheus_client in its multiprocess mode: with PROMETHEUS_MULTIPROC_DIR set, every
process (gunicorn workers, `worker.py`, the scheduler) writes its own files in that directory
and `GET /metrics` adds them up, so any web process answers for the whole machine.
Queue depth, oldest job age, live workers, active/stale runs and the last scheduler tick are
read from Redis and the database at scrape time instead: they are shared state, the same
whichever process answers.

Labels are bounded by design: stage numbers, AI function names, provider names, URL rules
(never raw paths), status codes. No account, site or run ids: per-account figures stay in
the app (billing, history), not in Prometheus.
"""
import hmac
import logging
import os
import time
from datetime import timezone
from pathlib import Path

from .config import metrics_dir

if metrics_dir():
    # prometheus_client creates this process's files as the metrics below are defined.
    os.makedirs(metrics_dir(), exist_ok=True)

import prometheus_client as pc  # noqa: E402  (after the directory exists)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram  # noqa: E402
from prometheus_client.core import GaugeMetricFamily  # noqa: E402

log = logging.getLogger(__name__)

RUNS = Counter("automation_runs", "Run lifecycle events: status is the event (started, paused, resumed, "
               "completed, failed, cancelled)", ["status", "trigger_type"])
ITEMS_PROCESSED = Counter("automation_items_processed", "Items a stage processed (committed)", ["stage"])
ITEMS_FAILED = Counter("automation_items_failed", "Items recorded as failed after all attempts", ["stage"])
AI_CALL_SECONDS = Histogram("automation_ai_call_seconds", "AI provider call duration (failed calls too)",
                            ["function", "provider"],
                            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120))
AI_RATE_LIMITED = Counter("automation_ai_rate_limited", "Times an AI call waited for its turn: the AI_MAX_RPM "
                          "spacing, or the shared block after a provider's HTTP 429")
CREDITS_CHARGED = Counter("automation_credits_charged", "Credits charged for AI work (committed)")
STALE_RUNS_RECOVERED = Counter("automation_stale_runs_recovered",
                               "Runs continued on another worker after their worker stopped beating")
SCHEDULER_TICKS = Counter("automation_scheduler_ticks", "Scheduled-runs ticks that ran")
NOTIFICATION_ATTEMPTS = Counter("automation_notification_attempts", "Webhook and email delivery attempts by "
                                "outcome (delivered, retrying, failed)", ["channel", "result"])
# livesum: the open sockets of the processes alive now; a dead process's count is dropped
# (mark_process_dead from gunicorn's child_exit / at exit / when a process claims the dir).
WS_ADMISSIONS = Counter("automation_websocket_admissions", "Websocket admission decisions at the per-user cap: "
                        "admitted, over_cap (4429), busy (4429: Redis pool exhausted or slow), unchecked "
                        "(admitted without the cap: Redis down)", ["result"])
WEBSOCKETS_OPEN = Gauge("automation_websockets_open", "Open websockets", multiprocess_mode="livesum")
HTTP_REQUESTS = Counter("automation_http_requests", "HTTP requests by URL rule and status", ["route", "status"])
HTTP_SECONDS = Histogram("automation_http_request_duration_seconds", "HTTP request duration by URL rule",
                         ["route"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

AI_FUNCTIONS = ("cluster_keywords", "generate_ideas", "generate_content", "generate_image_prompts",
                "generate_image")
RUN_EVENT_STATUS = {"run.started": "started", "run.paused": "paused", "run.resumed": "resumed",
                    "run.completed": "completed", "run.failed": "failed", "run.cancelled": "cancelled"}
UNMATCHED_ROUTE = "<unmatched>"


# -- calls from the rest of the app (one line each) ------------------------------------------
def items_processed(stage, count, credits=0):
    """After an item (or a batched unit) committed: its items and the credits it cost."""
    ITEMS_PROCESSED.labels(stage=str(stage)).inc(count)
    if credits:
        CREDITS_CHARGED.inc(credits)


def items_failed(stage, count):
    ITEMS_FAILED.labels(stage=str(stage)).inc(count)


def ai_rate_limited(count=1):
    AI_RATE_LIMITED.inc(count)


def notification_attempt(channel, result):
    """One webhook or email attempt ended: channel webhook|email, result delivered|retrying|failed."""
    NOTIFICATION_ATTEMPTS.labels(channel=channel, result=result).inc()


def websocket_opened():
    WEBSOCKETS_OPEN.inc()


def websocket_admission(result):
    WS_ADMISSIONS.labels(result=result).inc()


def websocket_closed():
    WEBSOCKETS_OPEN.dec()


def scheduler_ticked(r):
    SCHEDULER_TICKS.inc()
    if _shared_state is not None:
        _shared_state.record_tick(r)


class _TimedProvider:
    """The provider seen by the stages, with each AI call timed (by function and provider)."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, attr):
        value = getattr(self._inner, attr)
        if attr not in AI_FUNCTIONS or not callable(value):
            return value
        hist = AI_CALL_SECONDS.labels(function=attr, provider=getattr(self._inner, "name", "unknown"))

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                hist.observe(time.perf_counter() - start)
        return timed


def timed_provider(provider):
    return provider if isinstance(provider, _TimedProvider) else _TimedProvider(provider)


def on_run_event(event, run, actor, reason):
    status = RUN_EVENT_STATUS.get(event)
    if status:
        RUNS.labels(status=status, trigger_type=run.trigger_type or "unknown").inc()
    elif event == "run.recovered":
        STALE_RUNS_RECOVERED.inc()


# -- the multiprocess directory ----------------------------------------------------------------
def _pid_of(name):
    stem = name.rsplit(".", 1)[0]
    tail = stem.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _alive(pid, started=None):
    import psutil
    try:
        proc = psutil.Process(pid)
        # A pid reused by another program is not the process that claimed it.
        return started is None or abs(proc.create_time() - started) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def claim_dir(path):
    """Join this machine's metrics directory; wipe it first when no process is using it.

    prometheus_client wants the directory wiped between runs. Here several independently
    started processes share it (gunicorn's workers, `worker.py`s, the scheduler), so "a run"
    is the time some of them are alive: the first process to start on an unused directory
    wipes what the previous run left; while any is alive, a process that restarts keeps the
    files of the dead ones, so the machine's counters never go backwards. Dead processes' live
    gauges (open websockets) are dropped either way. Returns True if it wiped."""
    import fcntl
    import psutil
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    me = os.getpid()
    with open(directory / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        claims = {}
        for marker in directory.glob("claim_*.pid"):
            pid = _pid_of(marker.name)
            try:
                started = float(marker.read_text() or 0)
            except (OSError, ValueError):
                started = 0.0
            if pid is not None and pid != me and _alive(pid, started):
                claims[pid] = marker
            elif pid != me:
                marker.unlink(missing_ok=True)
        wiped = False
        if not claims:
            # Only files of processes that are gone: one that started a moment ago and is
            # about to claim keeps its files.
            for f in directory.glob("*.db"):
                pid = _pid_of(f.name)
                if pid != me and (pid is None or not _alive(pid)):
                    f.unlink(missing_ok=True)
                    wiped = True
        else:
            from prometheus_client import multiprocess
            for f in directory.glob("gauge_live*_*.db"):
                pid = _pid_of(f.name)
                if pid is not None and pid != me and not _alive(pid):
                    multiprocess.mark_process_dead(pid, str(directory))
        (directory / f"claim_{me}.pid").write_text(repr(psutil.Process(me).create_time()))
    return wiped


def release_dir(path, pid=None):
    """A process of this machine ends: drop its live gauges and its claim (its counters stay)."""
    if not path:
        return
    from prometheus_client import multiprocess
    pid = pid or os.getpid()
    try:
        multiprocess.mark_process_dead(pid, path)
        (Path(path) / f"claim_{pid}.pid").unlink(missing_ok=True)
    except OSError:
        pass


# -- exposition -----------------------------------------------------------------------------------
# The reader of the shared state (queues, workers, scheduler, run counts, the last tick):
# webapp/ops.py, handed in by create_app (`init_app(app, shared_state=ops)`), so that this
# low floor, called from everywhere, never imports the rooms it reports on.
_shared_state = None


class ScrapeCollector:
    """Shared state read when Prometheus scrapes (needs an app context)."""

    def collect(self):
        from .redis_conn import get_redis
        ops = _shared_state
        if ops is None:  # no app has handed a reader in: only the process's own figures
            return
        try:
            r = get_redis()
            qs = ops.queues(r)
            workers_alive = len(ops.workers(r))
            sched = ops.scheduler(r)
        except Exception as e:  # Redis down: the other figures still answer
            log.warning("metrics: Redis figures unavailable (%s)", e.__class__.__name__)
            qs, workers_alive, sched = None, None, None
        if qs is not None:
            depth = GaugeMetricFamily("automation_queue_depth", "Jobs waiting in the RQ queue", labels=["queue"])
            age = GaugeMetricFamily("automation_oldest_job_age_seconds",
                                    "How long the job at the head of the queue has waited (0 when empty)",
                                    labels=["queue"])
            failed = GaugeMetricFamily("automation_failed_jobs", "Jobs in the RQ failed-job registry",
                                       labels=["queue"])
            for q in qs:
                depth.add_metric([q["name"]], q["depth"])
                age.add_metric([q["name"]], q["oldest_age"] or 0.0)
                failed.add_metric([q["name"]], q["failed"])
            yield depth
            yield age
            yield failed
            yield GaugeMetricFamily("automation_workers_alive", "RQ workers registered in Redis (heartbeat "
                                    "not expired)", value=workers_alive)
            if sched["last_tick"] is not None:
                yield GaugeMetricFamily("automation_scheduler_last_tick_timestamp_seconds",
                                        "Unix time of the last scheduled-runs tick",
                                        value=_unix(sched["last_tick"]))
        try:
            counts = ops.run_counts()
        except Exception as e:
            from .extensions import db
            db.session.rollback()
            log.warning("metrics: database figures unavailable (%s)", e.__class__.__name__)
            return
        active = GaugeMetricFamily("automation_runs_active", "Runs by active status", labels=["status"])
        for status in ("running", "paused"):
            active.add_metric([status], counts[status])
        yield active
        yield GaugeMetricFamily("automation_runs_stale", "Running runs without a heartbeat for STALE_RUN_SECONDS",
                                value=counts["stale"])


def _unix(naive_utc):
    return naive_utc.replace(tzinfo=timezone.utc).timestamp()


def exposition(app):
    """The Prometheus text for this machine's processes plus the scrape-time gauges."""
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(ScrapeCollector())
    path = app.config.get("METRICS_DIR")
    if path:
        from prometheus_client import multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
        return pc.generate_latest(registry) + pc.generate_latest(scrape)
    return pc.generate_latest(pc.REGISTRY) + pc.generate_latest(scrape)


_claimed = {}


def init_app(app, shared_state=None):
    """The request counters and GET /metrics; `shared_state` is the reader of the scrape-time
    gauges (webapp/ops.py). Run events are counted by `on_run_event`, which create_app
    subscribes to the lifecycle hooks."""
    from flask import Response, abort, g, request

    global _shared_state
    if shared_state is not None:
        _shared_state = shared_state
    for result in ("admitted", "over_cap", "busy", "unchecked"):
        WS_ADMISSIONS.labels(result=result)
    for n in range(1, 8):  # every stage's series exists from the start (at 0), so rate() and alerts see it
        ITEMS_PROCESSED.labels(stage=str(n))
        ITEMS_FAILED.labels(stage=str(n))
    path = app.config.get("METRICS_DIR")
    if path and _claimed.get(os.getpid()) != path:  # once per process (create_app may run often)
        claim_dir(path)
        _claimed[os.getpid()] = path
    elif not path and app.config.get("METRICS_TOKEN"):
        log.warning("METRICS_TOKEN is set but PROMETHEUS_MULTIPROC_DIR is not: /metrics shows only the "
                    "process that answers (see docs/OPERATIONS.md)")

    @app.before_request
    def _start_timer():
        g._metrics_start = time.perf_counter()

    @app.after_request
    def _count_request(response):
        start = g.pop("_metrics_start", None)
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
        HTTP_REQUESTS.labels(route=route, status=str(response.status_code)).inc()
        if start is not None:
            HTTP_SECONDS.labels(route=route).observe(time.perf_counter() - start)
        return response

    @app.get("/metrics")
    def metrics():
        token = app.config.get("METRICS_TOKEN")
        if not token:
            abort(404)
        given = request.headers.get("Authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip().encode(), token.encode())):
            return Response("metrics need Authorization: Bearer $METRICS_TOKEN\n", 401,
                            {"WWW-Authenticate": 'Bearer realm="metrics"', "Content-Type": "text/plain"})
        return Response(exposition(app), 200, {"Content-Type": pc.CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})
