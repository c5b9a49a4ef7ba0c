"""Process logs for web, worker and scheduler: set up here, once per process.

LOG_FORMAT=text (default) keeps the familiar `time LEVEL logger: message` lines;
LOG_FORMAT=json writes one JSON object per line: time, level, logger, message, and
request_id, run_id, site_id, job_id whenever they are known.

Where the ids come from:
- web: every request gets a `request_id` (the X-Request-ID of a trusted proxy, else a new one),
  returned as the X-Request-ID header; `site_id`/`run_id` from the URL when it names them;
- the RQ jobs a request queues carry its request_id in `job.meta` (`job_meta()`), and the
  worker binds it, with the job id, while the job runs: web and worker lines share the id,
  and so do the follow-up jobs a run queues for itself;
- the engine binds `run_id`/`site_id` once it has loaded the run (`bind()`).
"""
import contextvars
import json
import logging
import os
import re
import sys
import uuid
from datetime import datetime, timezone

_FIELDS = ("request_id", "run_id", "site_id", "job_id")
_context = contextvars.ContextVar("automation_log_context", default={})
REQUEST_ID_HEADER = "X-Request-ID"
# What we accept from a proxy: short, printable, no spaces (it ends up in every log line).
_VALID_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(ids)s"


def new_request_id():
    return uuid.uuid4().hex


def bind(**ids):
    """Add ids to this thread's log context (None values are ignored); returns a token for reset()."""
    current = dict(_context.get())
    current.update({k: v for k, v in ids.items() if v is not None})
    return _context.set(current)


def reset(token):
    _context.reset(token)


def current(name):
    return _context.get().get(name)


def job_meta():
    """`meta` for an RQ job queued now: the request id travels with it into the worker."""
    rid = current_request_id()
    return {"request_id": rid} if rid else {}


def current_request_id():
    from flask import g, has_request_context
    if has_request_context() and getattr(g, "request_id", None):
        return g.request_id
    return current("request_id")


class ContextFilter(logging.Filter):
    """Puts the known ids on every record (an explicit `extra=` wins)."""

    def filter(self, record):
        ctx = _context.get()
        web = _request_ids()
        for name in _FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, web.get(name) or ctx.get(name))
        known = [f"{n}={getattr(record, n)}" for n in _FIELDS if getattr(record, n, None) is not None]
        record.ids = f" [{' '.join(known)}]" if known else ""
        return True


def _request_ids():
    from flask import g, has_request_context, request
    if not has_request_context():
        return {}
    out = {"request_id": getattr(g, "request_id", None)}
    args = request.view_args or {}
    for name in ("site_id", "run_id"):
        value = args.get(name)
        if value is None:
            raw = request.args.get(name, "")
            value = int(raw) if raw.isdigit() else None
        out[name] = value
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record):
        out = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        out["pid"] = record.process
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def formatter(fmt):
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


class _OurHandler(logging.StreamHandler):
    """Marks the handler this module installed, so a second create_app() reconfigures it."""


def configure(fmt="text", level=logging.INFO, force=False):
    """Install the process's log handler on the root logger (stderr).

    Left alone when something else already configured logging (e.g. pytest capturing, or an
    app embedding this one), unless `force`. Idempotent."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _OurHandler)]
    if ours:
        handler = ours[0]
    elif root.handlers and not force:
        return None
    else:
        handler = _OurHandler(sys.stderr)
        root.addHandler(handler)
        root.setLevel(level)
    handler.setFormatter(formatter(fmt))
    if not any(isinstance(f, ContextFilter) for f in handler.filters):
        handler.addFilter(ContextFilter())
    logging.captureWarnings(True)  # warnings become log lines too: every line stays JSON
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    return handler


def init_app(app):
    """Web side: request ids in and out, and the log set-up for this process."""
    from flask import g, request

    configure(app.config["LOG_FORMAT"])
    trusted = app.config["TRUSTED_PROXIES"]

    @app.before_request
    def _request_id():
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = incoming if incoming and _VALID_ID.match(incoming) and _trusted(request.remote_addr, trusted) \
            else new_request_id()

    @app.after_request
    def _echo_request_id(response):
        rid = getattr(g, "request_id", None)
        if rid:
            response.headers[REQUEST_ID_HEADER] = rid
        return response


def _trusted(addr, networks):
    import ipaddress
    try:
        ip = ipaddress.ip_address(addr or "")
    except ValueError:
        return False
    return any(ip in net for net in networks)


_events_log = logging.getLogger("automation.events")


def log_run_event(event, run, actor, reason):
    """One line per run lifecycle event, in whichever process it happens (web or worker)."""
    _events_log.info("%s by %s%s", event, actor, f": {reason}" if reason else "",
                     extra={"run_id": run.id, "site_id": run.site_id})


# -- the worker side ------------------------------------------------------------------------
class job_context:
    """Binds a job's ids (its request_id from meta, else a new one for the chain it starts)
    for the duration of the job."""

    def __init__(self, job):
        self.job = job

    def __enter__(self):
        meta = getattr(self.job, "meta", None) or {}
        run_id = None
        if self.job.func_name.startswith("webapp.automation.tasks.") and self.job.args:
            run_id = self.job.args[0]
        self.token = bind(job_id=self.job.id, request_id=meta.get("request_id") or new_request_id(), run_id=run_id)
        return self

    def __exit__(self, *exc):
        reset(self.token)
        return False


# -- a quiet console by default -----------------------------------------------------------------
# An open page polls (/live/…, htmx refreshes, the log tail) every few seconds and a run is many
# short RQ jobs: one line each drowns everything else. By default those lines are left out;
# ACCESS_LOG=1 logs every request, JOB_LOG=1 every job (ACCESS_LOG=0: no access lines at all).
POLL_PATHS = ("/live/", "/static/", "/healthz", "/readyz", "/favicon.ico", "/metrics", "/status")
_JOB_FORMATS = ("Worker %s: %s: %s (%s)", "Worker %s: %s: %s", "Successfully completed %s job in %ss on worker %s",
                "Successfully completed job %s in %ss on worker %s", "Worker %s: job %s result is kept for %s seconds",
                "Worker %s: job %s result discarded immediately")


def _flag(name):
    return (os.environ.get(name) or "").strip().lower()


def is_polling(environ):
    """A request an open page repeats on its own (not something a person did)."""
    if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
        return False
    path = environ.get("PATH_INFO") or ""
    if path.startswith(POLL_PATHS) or environ.get("HTTP_HX_REQUEST") == "true":  # htmx refreshes (/ops)
        return True
    # the live refresh (?v=<version>) and the log tail (?after=<line>)
    return any(part.startswith(("v=", "after=")) for part in (environ.get("QUERY_STRING") or "").split("&"))


class JobLineFilter(logging.Filter):
    """Drops RQ's per-job INFO lines (dequeued, completed, result kept) unless JOB_LOG=1; a
    failed job, a worker start or stop and every warning still show."""

    def filter(self, record):
        if _flag("JOB_LOG") in ("1", "true", "yes"):
            return True
        return not (record.levelno == logging.INFO and record.msg in _JOB_FORMATS)


def quiet_rq():
    lg = logging.getLogger("rq.worker")
    if not any(isinstance(f, JobLineFilter) for f in lg.filters):
        lg.addFilter(JobLineFilter())


# -- gunicorn's own loggers --------------------------------------------------------------------
try:
    from gunicorn.glogging import Logger as _GunicornLogger
except ImportError:  # pragma: no cover - gunicorn is a runtime dependency
    _GunicornLogger = object


# Paths that carry a secret: invitation links handed out before they moved the token into the
# fragment (`/invite#TOKEN`, never sent by a browser) still have it in the path, and a page
# there sends it on as the Referer of its own static files. Whoever reads access logs must not
# be able to accept an owner invitation.
_SECRET_IN_PATH = re.compile(r"(/invite/)[^/?#\s\"]+")


def scrub_secrets(text):
    return _SECRET_IN_PATH.sub(r"\1[redacted]", text) if "/invite/" in text else text


class GunicornLogger(_GunicornLogger):
    """gunicorn's error and access logs in the same format as the app's (gunicorn.conf.py),
    with secrets scrubbed from access lines (request line, path, Referer, any header atom)."""

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for key, value in list(atoms.items()):
            if isinstance(value, str) and "/invite/" in value:
                atoms[key] = scrub_secrets(value)
        return atoms

    def setup(self, cfg):
        super().setup(cfg)
        from .config import log_format
        if log_format() != "json":
            return  # text: gunicorn's own familiar format
        fmt = JsonFormatter()
        for lg in (self.error_log, self.access_log):
            for h in lg.handlers:
                h.setFormatter(fmt)
                h.addFilter(ContextFilter())

    def access(self, resp, req, environ, request_time):
        wanted = _flag("ACCESS_LOG")
        if wanted in ("0", "false", "no") or (wanted not in ("1", "true", "yes") and is_polling(environ)):
            return  # see POLL_PATHS: polling is left out unless ACCESS_LOG=1
        # The access line is written after the app returned: take the id from the response.
        rid = dict((k.lower(), v) for k, v in (resp.headers or [])).get(REQUEST_ID_HEADER.lower())
        token = bind(request_id=rid)
        try:
            super().access(resp, req, environ, request_time)
        finally:
            reset(token)
