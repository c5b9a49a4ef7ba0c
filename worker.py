"""Background processes.

    python worker.py              an RQ worker on the pipeline queue (fed by fair dispatch) and
                                  the control queue
    python worker.py --notify     an RQ worker for notifications only (webhooks, email): a slow
                                  receiver never holds a pipeline worker
    python worker.py --scheduler  rq-scheduler with the periodic jobs registered

Both honour REDIS_URL / DATABASE_URL; with REDIS_URL unset they use the embedded Redis
started by `make run` (or start it if none is running).
"""
import argparse
import atexit
import logging
import sys
import time

import redis

from webapp import create_app
from webapp.redis_conn import embedded_url, start_embedded


def _redis_url(app):
    url = app.config.get("REDIS_URL") or embedded_url(app.instance_path)
    if not url:
        url, _proc = start_embedded(app.instance_path)  # lives as long as this process
        from webapp.redis_conn import redacted
        logging.getLogger("worker").info("started embedded redis at %s", redacted(url))
    app.config["REDIS_URL"] = url
    return url


def run_worker(app, burst=False, notify=False):
    from redis import Redis
    from rq import Queue
    from webapp.automation.worker import AutomationWorker
    conn = Redis.from_url(_redis_url(app))
    with app.app_context():
        from webapp.automation.recovery import check_stale_runs
        from sqlalchemy.exc import DBAPIError
        try:
            recovered = check_stale_runs()
            if recovered:
                logging.getLogger("worker").info("at start: %s", recovered)
        except DBAPIError as e:
            sys.exit(f"Error: database not ready ({e.orig.__class__.__name__}); "
                     "run `flask --app wsgi init-db` and check DATABASE_URL")
        finally:
            from webapp.extensions import db
            db.session.remove()
        # The AI provider (for `openai`: the package import and its client, ~2 s) is built
        # now rather than by the first job, which would spend that inside a run.
        from webapp.ai import get_provider
        get_provider(app.config)
        from webapp.scheduling import CONTROL_QUEUE
        from webapp.notify.jobs import NOTIFY_QUEUE
        from webapp.imports import IMPORT_QUEUE
        log = logging.getLogger("worker")
        from webapp.logging_setup import quiet_rq
        quiet_rq()  # RQ's per-job lines only with JOB_LOG=1
        # RQ quits its loop when Redis vanishes mid-job (e.g. a restart): start a new loop
        # as soon as Redis answers again, until a stop is requested.
        while True:
            if notify:
                # Notifications have workers of their own: a receiver that drips its answer
                # holds one of these for at most WEBHOOK_TIMEOUT, never a pipeline worker.
                queues = [Queue(NOTIFY_QUEUE, connection=conn)]
            else:
                # Keyword imports (webapp/imports.py) before the pipeline: rare, bounded, and a
                # user is waiting for them.
                queues = [Queue(CONTROL_QUEUE, connection=conn), Queue(IMPORT_QUEUE, connection=conn),
                          Queue(app.config["RQ_QUEUE"], connection=conn)]
            w = AutomationWorker(queues, connection=conn)
            if not notify:
                w.pipeline_queue = app.config["RQ_QUEUE"]
            try:
                w.work(burst=burst, with_scheduler=False, logging_level="INFO")
            except (redis.ConnectionError, redis.TimeoutError) as e:
                log.warning("worker loop lost Redis: %s", e.__class__.__name__)
            if w.stop_signalled or burst:
                return
            log.warning("worker loop ended without a stop request; restarting when Redis answers")
            _wait_for_redis(conn)


def _wait_for_redis(conn, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if conn.ping():
                return
        except redis.RedisError:
            pass
        time.sleep(0.5)
    sys.exit("Redis did not come back within 5 minutes")


def run_scheduler(app):
    from webapp.scheduling import run_scheduler as _run
    _redis_url(app)
    with app.app_context():
        _run(app)


def main(argv=None):
    p = argparse.ArgumentParser(description="Automation Console background processes")
    p.add_argument("--scheduler", action="store_true", help="run rq-scheduler with the periodic jobs")
    p.add_argument("--notify", action="store_true", help="a worker for notifications (webhooks, email) only")
    p.add_argument("--burst", action="store_true", help="worker: exit when the queue is empty")
    args = p.parse_args(argv)
    app = create_app()
    from webapp.automation import appctx
    appctx.use_app_factory(lambda: app)  # a job outside run_worker's app context gets this app
    from webapp.metrics import release_dir
    # Drop this process's live gauges and its claim on the metrics directory when it ends.
    atexit.register(release_dir, app.config["METRICS_DIR"])
    if args.scheduler:
        run_scheduler(app)
    else:
        run_worker(app, burst=args.burst, notify=args.notify)
    return 0


if __name__ == "__main__":
    sys.exit(main())
