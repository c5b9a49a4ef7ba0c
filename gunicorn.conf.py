"""gunicorn settings read from the working directory (`gunicorn wsgi:app`)."""
import signal

worker_class = "gthread"
threads = 32  # each open websocket holds one thread
graceful_timeout = 5
keepalive = 5  # > the UI's 2-3 s polling interval, so polling browsers keep their connection


def post_worker_init(worker):
    """On SIGTERM, tell open websockets to close cleanly (1001) before gunicorn stops."""
    from webapp.web import live
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        live.SHUTDOWN.set()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)


# Logs in the app's format (LOG_FORMAT=json: gunicorn's error and access lines are JSON too).
logger_class = "webapp.logging_setup.GunicornLogger"


def child_exit(server, worker):
    """prometheus_client multiprocess mode: a web worker is gone, drop its live gauges (open
    websockets); its counters stay in PROMETHEUS_MULTIPROC_DIR so totals never go backwards."""
    from pathlib import Path
    from webapp.config import metrics_dir
    path = metrics_dir()
    if path:
        from prometheus_client import multiprocess  # not webapp.metrics: the master records nothing
        multiprocess.mark_process_dead(worker.pid, path)
        Path(path, f"claim_{worker.pid}.pid").unlink(missing_ok=True)
