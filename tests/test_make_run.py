"""The README's run command, end to end: fresh DB, embedded Redis, web + worker + scheduler,
demo login, clean stop with no orphans."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

pytestmark = pytest.mark.processes  # real processes (see pytest.ini)

ROOT = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_make_run_serves_demo_login_and_stops_cleanly(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")}
    env.update(INSTANCE_PATH=str(tmp_path / "instance"), PORT=str(port))
    venv = Path(sys.executable).parent.parent
    proc = subprocess.Popen(["make", "run", f"VENV={venv}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, text=True)
    output = []
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            line = proc.stdout.readline()
            output.append(line)
            if "Demo login:" in line or proc.poll() is not None:
                break
        text = "".join(output)
        assert f"http://localhost:{port}/" in text, text
        email, password = re.search(r"Demo login: (\S+) / (\S+)", text).groups()
        s = requests.Session()
        page = None
        deadline = time.time() + 60
        while page is None and time.time() < deadline and proc.poll() is None:
            try:
                page = s.get(f"http://127.0.0.1:{port}/login", timeout=15)
            except (requests.ConnectionError, requests.Timeout):  # still starting (slow on a loaded machine)
                time.sleep(0.2)
        assert page is not None and page.status_code == 200, "the web server never answered"
        token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page.text).group(1)
        r = s.post(f"http://127.0.0.1:{port}/login", data={"email": email, "password": password, "csrf_token": token})
        assert r.status_code == 200 and email in r.text and "Outdoor &amp; Home Blog" in r.text
        kids = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(k.cmdline()) for k in kids)
        assert "gunicorn" in names and "worker.py --scheduler" in names and "redis-server" in names
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        stop_started = time.monotonic()
        proc.wait(60)
        stop_took = time.monotonic() - stop_started
    gone, alive = psutil.wait_procs(kids, timeout=10)
    assert alive == [], [p.cmdline() for p in alive]
    text = "".join(output) + proc.stdout.read()
    # the supervisor reaps everything (Redis last) before it exits: within 2 s, plus make's exit
    assert stop_took < 2.5, (stop_took, text[-3000:])
    assert "lost Redis" not in text and "reconnecting" not in text.lower(), text[-3000:]


def test_children_do_not_outlive_a_killed_supervisor(tmp_path):
    """SIGKILL leaves the supervisor no time to clean up: the kernel stops its children."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")}
    env.update(INSTANCE_PATH=str(tmp_path / "instance"), PORT=str(port))
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "run.py")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True)
    try:
        deadline = time.time() + 90
        kids = []
        while time.time() < deadline:
            line = proc.stdout.readline()
            if "Press Ctrl-C" in line or proc.poll() is not None:
                break
        names = ""
        while time.time() < deadline:  # all four children up
            kids = psutil.Process(proc.pid).children(recursive=True)
            names = " ".join(" ".join(k.cmdline()) for k in kids)
            if all(n in names for n in ("gunicorn", "worker.py --scheduler", "redis-server")) and \
                    sum("worker.py" in " ".join(k.cmdline()) for k in kids) >= 2:
                break
            time.sleep(0.2)
        assert "redis-server" in names and "worker.py --scheduler" in names, names
        proc.kill()
        proc.wait(10)
        gone, alive = psutil.wait_procs(kids, timeout=15)
        assert alive == [], [p.cmdline() for p in alive]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
