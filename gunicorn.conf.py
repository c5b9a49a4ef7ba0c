"""gunicorn settings, read from the working directory (`gunicorn wsgi:app`; `make run`, the
Procfile and the README's production command all use this file).

Serving model: the gevent worker. Every connection — a request, an open websocket, a client
that sends its headers one byte at a time — is a greenlet, not a thread, so open sockets and
slow clients cost memory (~tens of KB each, docs/BENCHMARKS.md) but no request capacity. The
worker monkey-patches the standard library (sockets, threading, time) before the app is
imported, which makes redis-py and flask-sock cooperative; psycopg2 is a C extension and
needs psycogreen's wait callback, installed below, or every PostgreSQL query would block the
whole process. One process uses one core: run one worker per core (`--workers`).
"""
import os
import signal

worker_class = "gevent"
# Connections one process holds at once (requests + websockets + idle keep-alives). Each
# websocket also uses a file descriptor: the limit below is raised to match at start.
worker_connections = 10000
graceful_timeout = 5
keepalive = 5  # > the UI's 2 s polling interval, so polling browsers keep their connection
# gunicorn's control socket (`gunicornc`) defaults to one path per user ($XDG_RUNTIME_DIR or
# ~/.gunicorn/gunicorn.ctl): two instances on one machine would share it, and the second
# would take it over from the first. None by default; GUNICORN_CONTROL_SOCKET=/path gives
# this instance one of its own.
control_socket_disable = not os.environ.get("GUNICORN_CONTROL_SOCKET")
if not control_socket_disable:
    control_socket = os.environ["GUNICORN_CONTROL_SOCKET"]

# Twice the app's own limits (MAX_URL_LENGTH 4096, MAX_HEADER_BYTES 8190): a URL or header over
# the app's limit reaches the app, which answers 414 / 431 in its JSON envelope (gunicorn's own
# answer is an HTML page no API client can parse). 8190 is the longest request line gunicorn
# bounds (0 would mean a 1 MB buffer per connection).
limit_request_line = 8190
limit_request_field_size = 16380


def on_starting(server):
    """Raise the open-files limit toward worker_connections (soft limit up to the hard one)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = worker_connections + 1000
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def post_worker_init(worker):
    """In each worker, after gevent's patching: make psycopg2 cooperative, and on SIGTERM tell
    open websockets to close cleanly (1001) before gunicorn stops."""
    from gevent import monkey
    if monkey.is_module_patched("socket"):  # not when a thread worker is chosen on the command line
        from psycogreen.gevent import patch_psycopg
        patch_psycopg()
    from webapp.web import live
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        live.shutdown()
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
