"""Operations: GET /healthz (DB and Redis reachable, else 503) and GET /status (queue
depths, live workers, active and stale runs). Anonymous callers get aggregate numbers only;
worker names, states and pids need a logged-in user or `Authorization: Bearer $STATUS_TOKEN`
(webapp/security.py: status_details_allowed)."""
from datetime import timedelta

from flask import current_app, jsonify
from sqlalchemy import func, select, text

from .extensions import db
from .models import AutomationRun
from .models.base import utcnow
from .redis_conn import get_redis, ping_once
from .security import status_details_allowed


def _check_db():
    try:
        db.session.execute(text("SELECT 1"))
        return "ok"
    except Exception as e:  # report, never raise: this is the probe
        db.session.rollback()
        return f"error: {e.__class__.__name__}"


def _check_redis():
    try:
        ping_once(get_redis())  # one try, 2 s at most: a probe must answer before its caller gives up
        return "ok"
    except Exception as e:
        return f"error: {e.__class__.__name__}"


def init_app(app):
    @app.get("/healthz")
    def healthz():
        checks = {"database": _check_db(), "redis": _check_redis()}
        ok = all(v == "ok" for v in checks.values())
        return jsonify({"status": "ok" if ok else "unavailable", **checks}), 200 if ok else 503

    @app.get("/status")
    def status():
        from rq import Queue, Worker
        from .scheduling import CONTROL_QUEUE
        out = {"database": _check_db(), "redis": _check_redis()}
        if out["redis"] == "ok":
            r = get_redis()
            out["queues"] = {name: Queue(name, connection=r).count for name in (CONTROL_QUEUE, app.config["RQ_QUEUE"])}
            workers = Worker.all(connection=r)
            out["worker_count"] = len(workers)
            if status_details_allowed():
                out["workers"] = [{"name": w.name, "state": str(w.get_state()), "pid": w.pid} for w in workers]
        if out["database"] == "ok":
            cutoff = utcnow() - timedelta(seconds=current_app.config["STALE_RUN_SECONDS"])
            counts = dict(db.session.execute(select(AutomationRun.status, func.count()).where(
                AutomationRun.status.in_(("running", "paused"))).group_by(AutomationRun.status)).all())
            out["runs"] = {"running": counts.get("running", 0), "paused": counts.get("paused", 0),
                           "stale": db.session.execute(select(func.count()).select_from(AutomationRun).where(
                               AutomationRun.status == "running", AutomationRun.heartbeat_at < cutoff)).scalar()}
        ok = out["database"] == "ok" and out["redis"] == "ok"
        return jsonify(out), 200 if ok else 503
