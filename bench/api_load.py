"""API load: status routes against gunicorn (threads) with a run in progress.

    python bench/api_load.py [--duration 10] [--database-url URL]   (needs `wrk`: apt-get install wrk)

(a) capacity: 50 closed-loop connections (wrk) on each of current_run, current_processing,
    pipeline_overview, and in the same run on GET /api/v1/ping (same app, same auth, no
    work) as the baseline: req/s, p50/p99 and the ratio to the baseline;
(b) the real pattern: 200 browsers each polling the three routes every 2 s (open loop,
    asyncio keep-alive connections) for a bounded time: p50/p99;
(c) pipeline_overview with 1M keywords and 100k content rows in one site.
"""
import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import DEFAULT_DB, Env, free_port, fresh_database, make_site, make_token

ROUTES = {
    "ping (baseline)": "/api/v1/ping",
    "current_run": "/api/v1/automation/current_run/?site_id={site}",
    "current_processing": "/api/v1/automation/current_processing/?site_id={site}&run_id={run}",
    "pipeline_overview": "/api/v1/automation/pipeline_overview/?site_id={site}",
}


def wrk(url, token, duration, connections=50):
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency",
                          "-H", f"Authorization: Bearer {token}", url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": lat.get("50"), "p99": lat.get("99"), "errors": int(non2xx.group(1)) if non2xx else 0}


async def browsers(host, port, paths, token, n=200, period=2.0, duration=20.0):
    latencies, errors = [], 0
    end = time.monotonic() + duration

    async def browser(i):
        nonlocal errors
        await asyncio.sleep(period * i / n)  # spread the browsers over the period
        reader = writer = None
        while time.monotonic() < end:
            tick = time.monotonic()
            for path in paths:
                t = time.perf_counter()
                try:
                    if writer is None:  # (re)connect, as a browser does when keep-alive ends
                        reader, writer = await asyncio.open_connection(host, port)
                    writer.write((f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                                  "Connection: keep-alive\r\n\r\n").encode())
                    await writer.drain()
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(re.search(rb"Content-Length: (\d+)", head, re.I).group(1))
                    await reader.readexactly(length)
                except (ConnectionError, asyncio.IncompleteReadError):
                    errors += 1
                    writer = None
                    continue
                latencies.append((time.perf_counter() - t) * 1000)
                if not head.startswith(b"HTTP/1.1 200"):
                    errors += 1
            await asyncio.sleep(max(0.0, period - (time.monotonic() - tick)))
        if writer is not None:
            writer.close()

    await asyncio.gather(*(browser(i) for i in range(n)))
    q = statistics.quantiles(latencies, n=100)
    return {"requests": len(latencies), "rps": round(len(latencies) / duration, 1), "p50_ms": round(q[49], 1),
            "p99_ms": round(q[98], 1), "errors": errors}


def big_site(app, keywords=1_000_000, contents=100_000):
    """Bulk rows straight in SQL (the import path would take far longer than the measurement)."""
    from sqlalchemy import text
    from webapp.extensions import db
    acc_id, site_id = make_site(app, "big", 0)
    with app.app_context():
        t = time.perf_counter()
        db.session.execute(text(
            "INSERT INTO keyword (account_id, site_id, keyword, created_at) "
            "SELECT :a, :s, 'kw ' || g, now() FROM generate_series(1, :n) g"), {"a": acc_id, "s": site_id, "n": keywords})
        cl = db.session.execute(text("INSERT INTO cluster (account_id, site_id, name, terms, ideas_generated, created_at) "
                                     "VALUES (:a, :s, 'big cluster', 'big', true, now()) RETURNING id"),
                                {"a": acc_id, "s": site_id}).scalar()
        db.session.execute(text(
            "INSERT INTO content_idea (account_id, site_id, cluster_id, title, outline, keywords, status, created_at) "
            "SELECT :a, :s, :c, 'idea ' || g, '', '', 'queued', now() FROM generate_series(1, :n) g"),
            {"a": acc_id, "s": site_id, "c": cl, "n": contents})
        db.session.execute(text(
            "INSERT INTO task (account_id, site_id, idea_id, title, status, created_at) "
            "SELECT account_id, site_id, id, title, 'completed', now() FROM content_idea WHERE site_id = :s"), {"s": site_id})
        db.session.execute(text(
            "INSERT INTO content (account_id, site_id, task_id, title, body, word_count, status, prompts_generated, created_at) "
            "SELECT account_id, site_id, id, title, 'body', 1, CASE WHEN id % 2 = 0 THEN 'review' ELSE 'draft' END, "
            "id % 2 = 0, now() FROM task WHERE site_id = :s"), {"s": site_id})
        db.session.commit()
        db.session.execute(text("ANALYZE"))
        db.session.commit()
        print(f"  bulk rows inserted in {time.perf_counter() - t:.1f}s", flush=True)
        db.session.remove()
    return acc_id, site_id


def time_overview(app, acc_id, site_id, repeat=20):
    from webapp.automation.service import AutomationService
    from webapp.extensions import db
    with app.app_context():
        svc = AutomationService(acc_id)
        svc.pipeline_overview(site_id)  # warm
        samples = []
        for _ in range(repeat):
            t = time.perf_counter()
            stages = svc.pipeline_overview(site_id)
            samples.append((time.perf_counter() - t) * 1000)
        db.session.remove()
    return {"median_ms": round(statistics.median(samples), 1), "max_ms": round(max(samples), 1),
            "pending": [s["pending"] for s in stages]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--database-url", default=DEFAULT_DB.replace("/bench", "/bench_api"))
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--browsers-seconds", type=float, default=20)
    p.add_argument("--skip-big", action="store_true")
    args = p.parse_args()
    fresh_database(args.database_url)
    # One token drives all the load: lift the per-token API limit (its cost is still measured).
    env = Env(args.database_url, AI_LOCAL_LATENCY_MS=400, API_RATE_LIMIT="100000000 per minute")
    app = env.app()
    results = {}
    procs = []
    try:
        acc_id, site_id = make_site(app, "load", 400, stage_1_batch_size=5)
        from webapp.automation.service import AutomationService
        from webapp.extensions import db
        token = make_token(app, acc_id, "load@example.com")
        with app.app_context():
            run_id = AutomationService(acc_id).start(site_id).id
            db.session.remove()
        procs.append(env.spawn(sys.executable, "worker.py", log_name="worker.log"))
        port = free_port()
        procs.append(env.spawn(str(Path(sys.executable).parent / "gunicorn"), "--bind", f"127.0.0.1:{port}",
                               "--worker-class", "gthread", "--workers", "2", "--threads", "16", "wsgi:app",
                               log_name="web.log"))
        import requests
        for _ in range(100):
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        time.sleep(2)  # the run gets going: processing state present
        state = requests.get(f"http://127.0.0.1:{port}" + ROUTES["current_processing"].format(site=site_id, run=run_id),
                             headers={"Authorization": f"Bearer {token}"}).json()
        print("processing state during the benchmark:", json.dumps(state["data"]["state"])[:160], flush=True)
        cap = {}
        for name, path in ROUTES.items():
            cap[name] = wrk(f"http://127.0.0.1:{port}" + path.format(site=site_id, run=run_id), token, args.duration)
            print(f"  {name:20s} {cap[name]}", flush=True)
        base = cap["ping (baseline)"]["rps"]
        for name in cap:
            cap[name]["ratio_to_baseline"] = round(cap[name]["rps"] / base, 2)
        results["capacity"] = cap
        paths = [ROUTES[k].format(site=site_id, run=run_id) for k in ("current_run", "current_processing", "pipeline_overview")]
        results["browsers"] = asyncio.run(browsers("127.0.0.1", port, paths, token, duration=args.browsers_seconds))
        print("  200 polling browsers:", results["browsers"], flush=True)
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    if not args.skip_big:
        acc_big, site_big = big_site(app)
        results["overview_1M"] = time_overview(app, acc_big, site_big)
        print("  pipeline_overview at 1M keywords / 100k content:", results["overview_1M"], flush=True)
    env.close()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
