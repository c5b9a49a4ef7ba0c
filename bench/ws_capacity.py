"""Websocket capacity of one web process started as `make run` starts it (gunicorn with
gunicorn.conf.py: the gevent worker).

    python bench/ws_capacity.py [--sockets 1000 --slow 100 --steps 2000,3000]

Opens N log websockets spread over users within their cap (WS_MAX_PER_USER sockets per user,
users in several accounts, each account with an active run), plus S "slow-header" clients that
send one header line every 2 s and never finish their request. Then, with all of them open:
- another account's `current_run` and `/healthz`, 300 calls each: p50/p99 (target p99 < 50 ms);
- lines written to each run (through the engine's AutomationLogger): the share of the open
  sockets that receive each line within 1 s (target >= 95 %);
- the web process's memory per socket and CPU while the sockets are open and idle.
The same figures before any socket is open are the baseline. `--steps` then adds sockets
(2 000, 3 000, …) and repeats, to find the ceiling of one process.

The clients run in this process on gevent (one greenlet per socket), so they share the
machine's cores with the server: on a small machine the client side is part of the cost.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import psutil  # noqa: E402
import requests  # noqa: E402
import websocket  # noqa: E402
from gevent.pool import Pool  # noqa: E402

from common import DEFAULT_DB, Env, free_port, make_site, make_token  # noqa: E402

RUNS = 10  # accounts with an active run each; sockets spread evenly over them


def percentile(values, p):
    if len(values) < 2:
        return round(values[0], 1) if values else None
    return round(statistics.quantiles(values, n=100)[p - 1], 1)


class Sockets:
    """Open websocket clients; each records when lines tagged `bench-line <k>` arrive."""

    def __init__(self, port):
        self.port, self.clients, self.failed, self.arrivals = port, [], 0, {}

    def open(self, run_id, token):
        try:
            ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws/runs/{run_id}/logs?after=1000000",
                                             header=[f"Authorization: Bearer {token}"], timeout=60)
        except Exception:
            self.failed += 1
            return
        self.clients.append(ws)
        gevent.spawn(self._read, ws, len(self.clients) - 1, run_id)

    def _read(self, ws, idx, run_id):
        ws.settimeout(None)
        while True:
            try:
                msg = ws.recv()
            except Exception:
                return
            if "bench-line" in msg:
                k = msg.rsplit(" ", 1)[1]
                self.arrivals.setdefault(k, {})[idx] = time.time()


def slow_client(port, stop):
    """Sends a request line and then one header line every 2 s, forever (slowloris)."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        i = 0
        while not stop[0]:
            gevent.sleep(2)
            s.sendall(f"X-Slow-{i}: {'a' * 20}\r\n".encode())
            i += 1
    except OSError:
        pass


def probe(port, other_site, other_token, n=300):
    """Latency of another account's current_run and of /healthz (keep-alive, sequential)."""
    out = {}
    for name, path, headers in (
            ("current_run", f"/api/v1/automation/current_run/?site_id={other_site}", {"Authorization": f"Bearer {other_token}"}),
            ("healthz", "/healthz", {})):
        s = requests.Session()
        times, errors = [], 0
        for _ in range(n):
            t = time.perf_counter()
            try:
                r = s.get(f"http://127.0.0.1:{port}{path}", headers=headers, timeout=10)
                ok = r.status_code == 200
            except requests.RequestException:
                ok = False
            times.append((time.perf_counter() - t) * 1000)
            errors += not ok
            gevent.sleep(0.01)
        out[name] = {"p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99), "errors": errors}
    return out


def fanout(app, loggers, socks, lines=5):
    """Write `lines` lines to every run, 1 s apart; the share of open sockets that got each
    line within 1 s of its write."""
    open_now = len(socks.clients)
    shares, delays = [], []
    for i in range(lines):
        sent = {}
        with app.app_context():
            for run_id, logger in loggers.items():
                key = f"{i}-{run_id}-{time.time():.3f}"
                sent[key] = time.time()
                logger.log(f"bench-line {key}", stage=4)
        gevent.sleep(1.5)
        got = 0
        for key, t0 in sent.items():
            for t in socks.arrivals.get(key, {}).values():
                delays.append((t - t0) * 1000)
                got += (t - t0) <= 1.0
        shares.append(got / open_now if open_now else 0)
    return {"lines": lines, "share_within_1s": round(min(shares), 4), "share_mean": round(sum(shares) / len(shares), 4),
            "delivery_p50_ms": percentile(delays, 50), "delivery_p99_ms": percentile(delays, 99)}


def process_stats(proc, seconds=5):
    workers = proc.children(recursive=True) or [proc]
    t0 = sum(w.cpu_times().user + w.cpu_times().system for w in workers)
    gevent.sleep(seconds)
    t1 = sum(w.cpu_times().user + w.cpu_times().system for w in workers)
    return {"rss_mb": round(sum(w.memory_info().rss for w in workers) / 2**20, 1),
            "idle_cpu_percent": round(100 * (t1 - t0) / seconds, 1)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--database-url", default=DEFAULT_DB.replace("/bench", "/bench_wscap"))
    p.add_argument("--sockets", type=int, default=1000)
    p.add_argument("--slow", type=int, default=100)
    p.add_argument("--steps", default="2000,3000", help="total socket counts to try after the first")
    p.add_argument("--per-user", type=int, default=20)
    args = p.parse_args()
    from common import fresh_database
    fresh_database(args.database_url)
    env = Env(args.database_url, WS_MAX_PER_USER=args.per_user)
    app = env.app()
    from webapp.automation.logger import AutomationLogger
    from webapp.automation.service import AutomationService
    from webapp.extensions import db
    from webapp.models import AutomationRun
    from webapp.redis_conn import get_redis

    targets = sorted({args.sockets, *[int(s) for s in args.steps.split(",") if s]})
    users_per_run = -(-targets[-1] // (RUNS * args.per_user))
    runs, loggers = [], {}
    for a in range(RUNS):
        acc_id, site_id = make_site(app, f"wscap{a}", 10)
        tokens = [make_token(app, acc_id, f"u{a}-{u}@example.com") for u in range(users_per_run)]
        with app.app_context():
            run = AutomationService(acc_id).start(site_id)  # no worker: the run stays active
            run = db.session.get(AutomationRun, run.id)
            loggers[run.id] = AutomationLogger(app.config["LOG_DIR"], run, get_redis())
            db.session.expunge(run)
        runs.append((run.id, tokens))
    other_acc, other_site = make_site(app, "other", 10)
    other_token = make_token(app, other_acc, "other@example.com")

    port = free_port()
    web = env.spawn(str(Path(sys.executable).parent / "gunicorn"), "--config", "gunicorn.conf.py", "--bind",
                    f"127.0.0.1:{port}", "--workers", "1", "wsgi:app", log_name="web.log")
    out = {"per_user_cap": args.per_user, "runs": RUNS, "slow_clients": args.slow}
    stop = [False]
    try:
        for _ in range(200):
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                gevent.sleep(0.1)
        proc = psutil.Process(web.pid)
        probe(port, other_site, other_token, n=50)  # warm-up
        out["baseline"] = {"probe": probe(port, other_site, other_token), **process_stats(proc)}
        rss0 = out["baseline"]["rss_mb"]
        slow = [gevent.spawn(slow_client, port, stop) for _ in range(args.slow)]
        socks = Sockets(port)
        # Which (run, token) each next socket uses: every user gets at most per_user sockets.
        plan = [(run_id, tok) for u in range(users_per_run) for run_id, tokens in runs
                for tok in [tokens[u]] * args.per_user]
        out["steps"] = []
        opened = 0
        for target in targets:
            pool = Pool(100)
            t0 = time.time()
            for run_id, tok in plan[opened:target]:
                pool.spawn(socks.open, run_id, tok)
            pool.join()
            opened = target
            gevent.sleep(2)
            step = {"sockets_requested": target, "sockets_open": len(socks.clients), "refused_or_failed": socks.failed,
                    "open_seconds": round(time.time() - t0, 1)}
            step.update(process_stats(proc))
            step["memory_per_socket_kb"] = round((step["rss_mb"] - rss0) * 1024 / max(1, len(socks.clients)), 1)
            step["probe"] = probe(port, other_site, other_token)
            step["fanout"] = fanout(app, loggers, socks)
            out["steps"].append(step)
            print(json.dumps(step), file=sys.stderr, flush=True)
        stop[0] = True
        gevent.killall(slow, block=False)
    finally:
        os.killpg(web.pid, signal.SIGKILL)
        web.wait(30)
        env.close()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
