"""Websocket fan-out: 200 clients tailing one active run's log.

    python bench/ws_fanout.py [--clients 200 --lines 300 --interval 0.05]

Starts gunicorn (gthread, threads for 200 sockets) and connects N websocket clients (one
thread each) to /ws/runs/<id>/logs; then writes lines to the run's log through the
engine's AutomationLogger, each line carrying its write time. Prints p50/p99 of the delay
from a line being written to it arriving at a client, and the web process's CPU use.
"""
import argparse
import json
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

import psutil
import websocket

from common import DEFAULT_DB, Env, free_port, fresh_database, make_site, make_token


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--database-url", default=DEFAULT_DB.replace("/bench", "/bench_ws"))
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--lines", type=int, default=300)
    p.add_argument("--interval", type=float, default=0.05)
    args = p.parse_args()
    fresh_database(args.database_url)
    env = Env(args.database_url)
    app = env.app()
    from webapp.automation.logger import AutomationLogger
    from webapp.automation.service import AutomationService
    from webapp.extensions import db
    from webapp.models import AutomationRun
    from webapp.redis_conn import get_redis
    acc_id, site_id = make_site(app, "ws", 20)
    token = make_token(app, acc_id, "ws@example.com")
    with app.app_context():
        run = AutomationService(acc_id).start(site_id)  # no worker: the run stays active, we write its log
        run = db.session.get(AutomationRun, run.id)
        logger = AutomationLogger(app.config["LOG_DIR"], run, get_redis())
        run_id = run.id
        db.session.expunge(run)
    port = free_port()
    web = env.spawn(str(Path(sys.executable).parent / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--worker-class",
                    "gthread", "--workers", "1", "--threads", str(args.clients + 20), "--graceful-timeout", "3",
                    "wsgi:app", log_name="web.log")
    try:
        out = measure(args, app, logger, port, run_id, token, web)
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        web.wait(30)
        env.close()
    print(json.dumps(out))


def measure(args, app, logger, port, run_id, token, web):
    time.sleep(3)
    delays, lock = [], threading.Lock()
    ready = threading.Barrier(args.clients + 1)
    warm = threading.Semaphore(0)
    stop = threading.Event()

    def client():
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws/runs/{run_id}/logs?after=1000000",
                                         header=[f"Authorization: Bearer {token}"], timeout=30)
        ready.wait()
        while "warm-up" not in ws.recv():  # the server side is subscribed and streaming
            pass
        warm.release()
        got = 0
        while got < args.lines and not stop.is_set():
            try:
                msg = ws.recv()
            except Exception:
                break
            if "bench-line" in msg:
                sent = float(msg.rsplit(" ", 1)[1])
                with lock:
                    delays.append((time.time() - sent) * 1000)
                got += 1
        ws.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
    for t in threads:
        t.start()
    ready.wait()
    # Warm-up: write until every client has received a line, so only steady state is measured.
    with app.app_context():
        seen = 0
        while seen < args.clients:
            logger.log("warm-up", stage=4)
            time.sleep(0.1)
            while warm.acquire(blocking=False):
                seen += 1
    proc = psutil.Process(web.pid)
    workers = [proc] + proc.children(recursive=True)
    cpu0 = sum(w.cpu_times().user + w.cpu_times().system for w in workers)
    t0 = time.time()
    with app.app_context():
        for i in range(args.lines):
            logger.log(f"bench-line {i} {time.time():.6f}", stage=4)
            time.sleep(args.interval)
    deadline = time.time() + 30
    for t in threads:
        t.join(max(0.1, deadline - time.time()))
    stop.set()
    wall = time.time() - t0
    cpu1 = sum(w.cpu_times().user + w.cpu_times().system for w in workers)
    q = statistics.quantiles(delays, n=100)
    return {"clients": args.clients, "lines": args.lines, "lines_per_s": round(1 / args.interval, 1),
           "delivered": len(delays), "expected": args.clients * args.lines, "p50_ms": round(q[49], 1),
           "p99_ms": round(q[98], 1), "max_ms": round(max(delays), 1),
           "web_cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / wall, 1)}


if __name__ == "__main__":
    main()
