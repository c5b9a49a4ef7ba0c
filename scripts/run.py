"""`make run`: migrate, seed the demo login into an empty DB, start everything, stop it all
on Ctrl-C / SIGTERM.

Started here: the embedded Redis (only when REDIS_URL is unset), the web server (gunicorn
with its gevent worker, see gunicorn.conf.py), one RQ worker and the scheduler. Each child runs in its
own process group and is stopped with SIGTERM, then SIGKILL after a grace period.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from webapp.procs import tied_to_parent  # noqa: E402
GRACE = 1.2  # seconds before SIGKILL: everything is down within 2 s of Ctrl-C
REDIS_GRACE = 0.5


def log(msg):
    print(f"[run] {msg}", flush=True)


def main():
    os.chdir(ROOT)
    from webapp import create_app
    app = create_app()
    with app.app_context():
        from flask_migrate import upgrade
        from sqlalchemy import select
        from webapp.demo import DEMO_EMAIL, DEMO_PASSWORD, seed
        from webapp.extensions import db
        from webapp.models import User
        upgrade()
        seeded = db.session.execute(select(User.id).limit(1)).first() is None
        if seeded:
            seed()
        db.session.remove()
        db.engine.dispose()

    env = dict(os.environ)
    env.setdefault("INSTANCE_PATH", app.instance_path)
    # Metrics of web, worker and scheduler add up in one directory (prometheus_client's
    # multiprocess mode); the first of them to start wipes what the last `make run` left.
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(Path(app.instance_path) / "prometheus"))
    children = []
    redis_proc = None
    if not env.get("REDIS_URL"):
        from webapp.redis_conn import start_embedded
        url, redis_proc = start_embedded(app.instance_path)
        env["REDIS_URL"] = url
        from webapp.redis_conn import redacted
        # Never the password: a terminal is scrolled back, copied, recorded. It is in
        # instance/redis.url (0600) for whoever needs it.
        log(f"embedded Redis at {redacted(url)} (URL with password in instance/redis.url)")

    host, port = env.get("HOST", "127.0.0.1"), env.get("PORT", "5000")
    bin_dir = Path(sys.executable).parent
    commands = {
        # gunicorn.conf.py: the gevent worker (websockets and slow clients are greenlets).
        "web": [str(bin_dir / "gunicorn"), "--config", "gunicorn.conf.py", "--bind", f"{host}:{port}",
                "--workers", env.get("WEB_WORKERS", "1"), "--access-logfile", "-", "wsgi:app"],
        "worker": [sys.executable, "worker.py"],
        # Notifications on workers of their own: a slow receiver never holds the pipeline's.
        "notify": [sys.executable, "worker.py", "--notify"],
        "notify2": [sys.executable, "worker.py", "--notify"],
        "scheduler": [sys.executable, "worker.py", "--scheduler"],
    }
    for name, cmd in commands.items():
        children.append((name, subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True,
                                                preexec_fn=tied_to_parent())))

    stopping = []

    def stop(signum, _frame):
        stopping.append(signum)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    url = f"http://{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{port}/"
    log(f"Automation Console is starting at {url}")
    log(f"Demo login: {DEMO_EMAIL} / {DEMO_PASSWORD}" + ("" if seeded else " (if you kept the demo account)"))
    log("Press Ctrl-C to stop.")
    code = 0
    while not stopping:
        for name, proc in children:
            if proc.poll() is not None:
                log(f"{name} exited with code {proc.returncode}; stopping everything")
                stopping.append(name)
                code = 1
                break
        time.sleep(0.1)

    log("stopping...")
    for _name, proc in children:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.time() + GRACE
    for _name, proc in children:
        try:
            proc.wait(max(0.05, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pass
        _kill_group(proc)
    if redis_proc is not None:
        redis_proc.terminate()
        try:
            redis_proc.wait(REDIS_GRACE)
        except subprocess.TimeoutExpired:
            redis_proc.kill()
            redis_proc.wait()
        (Path(app.instance_path) / "redis.url").unlink(missing_ok=True)
    log("stopped.")
    return code


def _kill_group(proc):
    """SIGKILL what is left of the child's process group (a worker's work horse included)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


if __name__ == "__main__":
    code = main()
    # Everything it started is reaped: leave without the interpreter's teardown, which waits
    # on library threads of the app this process loaded for migrations (seconds, for nothing).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
