"""One account's load against another account's latency, on one web process started as
`make run` starts it (gunicorn with gunicorn.conf.py: the gevent worker) plus one worker.

    python bench/isolation.py [--db postgresql://postgres@127.0.0.1/webload_bench] [--rows 50000]

Account B polls its `current_run` the whole time (sequential calls, as a page does); its p50/p99
are reported per phase, against the idle phase. Account A meanwhile:
1. imports ROWS keywords (one CSV upload: 202, a background job; polled until completed);
2. opens 200 log sockets at once (WS_MAX_PER_USER=25: how many stay open);
3. replays a 250,000-line run log from line 0 on 5 sockets at once (each gets the marker and
   the last WS_REPLAY_LINES lines), while two clients loop `logs?lines=5000&before=…`;
   the web process's RSS is sampled during the replay.
Targets (issue 23): B's p99 <= 250 ms and <= 5x idle during the import; RSS < +100 MB.

The clients run in this process (threads) on the same small machine: their cost is part of
what is measured, and the machine is shared — compare the ratios of one run, not absolutes.
"""
import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import psutil
import requests
import websocket

from common import Env, free_port, fresh_database, make_site, make_token



def pct(values, p):
    if not values:
        return None
    if len(values) < 2:
        return round(values[0], 1)
    return round(statistics.quantiles(values, n=100)[p - 1], 1)


def _probe_loop(url, token, stop, out):
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {token}"
    samples, errors = [], 0
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            ok = s.get(url, timeout=30).status_code == 200
        except requests.RequestException:
            ok = False
        if ok:
            samples.append((time.perf_counter() - t0) * 1000)
        else:
            errors += 1
        time.sleep(0.02)
    out.send((samples, errors))


class Prober:
    """Account B's page: current_run, one call after another, latencies in ms. In a process of
    its own, so that the load generators' threads (and this process's GIL) do not delay it."""

    def __init__(self, base, site_id, token):
        self.url = f"{base}/api/v1/automation/current_run/?site_id={site_id}"
        self.token = token

    def during(self, fn, seconds=None):
        import multiprocessing as mp
        ctx = mp.get_context("spawn")
        stop, (recv, send) = ctx.Event(), ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_probe_loop, args=(self.url, self.token, stop, send), daemon=True)
        proc.start()
        time.sleep(1.0)  # the prober's start-up is not part of the phase
        try:
            extra = fn() if fn else time.sleep(seconds)
        finally:
            stop.set()
            samples, errors = recv.recv()
            proc.join(30)
        return {"p50_ms": pct(samples, 50), "p99_ms": pct(samples, 99), "calls": len(samples),
                "errors": errors, **(extra or {})}


def web_worker_process(master):
    deadline = time.time() + 30
    while time.time() < deadline:
        kids = psutil.Process(master.pid).children()
        if kids:
            return kids[0]
        time.sleep(0.1)
    raise SystemExit("no gunicorn worker")


def write_log(path, n):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for i in range(1, n + 1):
            fh.write(f"2026-12-01T21:00:00.000Z [stage 4] item {i}: generated article 'a title of some length' "
                     f"({random.randint(400, 900)} words)\n")
    path.with_suffix(".count").write_text(str(n))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--db", default=None, help="database URL (default: a SQLite file of its own)")
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--log-lines", type=int, default=250_000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    env = Env(args.db or "sqlite:///" + str(Path("/tmp") / f"isolation-bench-{os.getpid()}.db"),
              WS_MAX_PER_USER=25, API_RATE_LIMIT="100000 per minute")
    fresh_database(env.vars["DATABASE_URL"])
    app = env.app()
    a_acc, a_site = make_site(app, "importer", 10)
    b_acc, b_site = make_site(app, "bystander", 10)
    a_tok = make_token(app, a_acc, "a@bench.example")
    b_tok = make_token(app, b_acc, "b@bench.example")
    with app.app_context():
        from webapp.automation.logger import run_log_path
        from webapp.automation.service import AutomationService
        run = AutomationService(a_acc).start(a_site)  # no pipeline worker picks it up: stays active
        run_id, log_path = run.id, run_log_path(app.config["LOG_DIR"], a_acc, a_site, run.id)
    port = free_port()
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    web = env.spawn(gunicorn, "--config", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                    "wsgi:app", log_name="web.log")
    # Only the import queue: the run above must stay active without being worked on.
    worker = env.spawn(str(Path(sys.executable).parent / "rq"), "worker", "--url", env.vars["REDIS_URL"],
                       "--worker-class", "webapp.automation.worker.AutomationWorker", "automation-import",
                       log_name="worker.log")
    base = f"http://127.0.0.1:{port}"
    results = {"rows": args.rows, "log_lines": args.log_lines, "database": env.vars["DATABASE_URL"].split(":")[0]}
    try:
        for _ in range(300):
            try:
                if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        env.wait_workers(1)
        proc = web_worker_process(web)
        prober = Prober(base, b_site, b_tok)
        prober.during(None, seconds=2)  # warm-up
        results["idle"] = prober.during(None, seconds=8)

        def do_import():
            body = "keyword,volume\n" + "".join(f"isolation keyword {i} topic,{i % 1000}\n" for i in range(args.rows))
            t0 = time.perf_counter()
            r = requests.post(f"{base}/api/v1/planner/keywords/bulk/?site_id={a_site}", data=body.encode(),
                              headers={"Authorization": f"Bearer {a_tok}", "Content-Type": "text/csv"}, timeout=120)
            post_ms = (time.perf_counter() - t0) * 1000
            assert r.status_code == 202, r.text
            imp = r.json()["data"]["import"]
            polls = 0
            while imp["status"] not in ("completed", "failed"):
                time.sleep(0.25)
                polls += 1
                imp = requests.get(f"{base}/api/v1/planner/imports/{imp['id']}/",
                                   headers={"Authorization": f"Bearer {a_tok}"}, timeout=30).json()["data"]["import"]
            return {"post_ms": round(post_ms, 1), "import_seconds": round(time.perf_counter() - t0, 1),
                    "status": imp["status"], "created": imp.get("created"), "progress_polls": polls}
        results["import"] = prober.during(do_import)

        def bursts(rounds=3):
            cpu0 = sum(proc.cpu_times()[:2])
            t0 = time.perf_counter()
            per = [burst() for _ in range(rounds) if time.sleep(2) is None]
            return {"rounds": rounds, "sockets": 200, "open": [b["open"] for b in per],
                    "refused": [b["refused"] for b in per],
                    "web_cpu_seconds_per_burst": round((sum(proc.cpu_times()[:2]) - cpu0) / rounds, 2),
                    "seconds": round(time.perf_counter() - t0, 1)}

        def burst():
            out = [None] * 200
            go = threading.Event()

            def one(i):
                go.wait()
                try:
                    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws/runs/{run_id}/logs", timeout=30,
                                                     header=[f"Authorization: Bearer {a_tok}"])
                    ws.settimeout(5)
                    try:
                        opcode, _ = ws.recv_data(control_frame=True)
                        out[i] = ("closed", ws) if opcode == websocket.ABNF.OPCODE_CLOSE else ("open", ws)
                    except websocket.WebSocketTimeoutException:
                        out[i] = ("open", ws)  # admitted, nothing to say yet
                except Exception:
                    out[i] = ("error", None)
            ts = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(200)]
            [t.start() for t in ts]
            go.set()
            [t.join(60) for t in ts]
            opened = sum(1 for o in out if o and o[0] == "open")
            for o in out:
                if o and o[1] is not None:
                    try:
                        o[1].close()
                    except Exception:
                        pass
            return {"sockets": 200, "open": opened, "refused": sum(1 for o in out if o and o[0] == "closed")}
        results["burst"] = prober.during(bursts)

        write_log(Path(log_path), args.log_lines)
        time.sleep(3)  # the burst's sockets noticed gone and released

        def replay():
            rss0 = proc.memory_info().rss
            peak = [rss0]
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    try:
                        peak[0] = max(peak[0], proc.memory_info().rss)
                    except psutil.Error:
                        return
                    time.sleep(0.05)
            got = []

            def reader():
                ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws/runs/{run_id}/logs?after=0", timeout=60,
                                                 header=[f"Authorization: Bearer {a_tok}"])
                n, marker = 0, None
                ws.settimeout(5)
                try:
                    while True:
                        msg = ws.recv()
                        if marker is None:
                            marker = msg
                        n += 1
                except Exception:
                    pass
                ws.close()
                got.append((n, marker))

            def pager():
                s = requests.Session()
                s.headers["Authorization"] = f"Bearer {a_tok}"
                t_end = time.time() + 8
                while time.time() < t_end:
                    before = random.randint(5001, args.log_lines)
                    s.get(f"{base}/api/v1/automation/logs/?run_id={run_id}&lines=5000&before={before}", timeout=60)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            t0 = time.perf_counter()
            readers = [threading.Thread(target=reader, daemon=True) for _ in range(5)]
            pagers = [threading.Thread(target=pager, daemon=True) for _ in range(2)]
            [t.start() for t in readers + pagers]
            [t.join(120) for t in readers + pagers]
            stop.set()
            sampler.join(5)
            return {"replay_sockets": 5, "lines_per_socket": [n for n, _ in got],
                    "marker": (got[0][1] or "")[:80] if got else None, "seconds": round(time.perf_counter() - t0, 1),
                    "rss_before_mb": round(rss0 / 2**20, 1), "rss_peak_mb": round(peak[0] / 2**20, 1),
                    "rss_growth_mb": round((peak[0] - rss0) / 2**20, 1)}
        results["replay"] = prober.during(replay)
    finally:
        for proc_ in (web, worker):
            try:
                os.killpg(proc_.pid, 15)
                proc_.wait(20)
            except Exception:
                pass
        env.close()
    idle99 = results["idle"]["p99_ms"] or 1
    for phase in ("import", "burst", "replay"):
        if results[phase].get("p99_ms") is not None:
            results[phase]["p99_vs_idle"] = round(results[phase]["p99_ms"] / idle99, 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
