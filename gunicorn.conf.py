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
