"""AI throughput: a run's wall time by `ai_concurrency` against an OpenAI-compatible stub
with a fixed latency, and the request rate achieved under a binding provider limit.

    python bench/ai_throughput.py [--keywords 300] [--latency-ms 500] [--concurrency 1 4 16 32]
                                  [--rpm 300] [--rate-keywords 300] [--database-url URL]

(1) For each concurrency: one `worker.py` process, one site of N keywords, the stub answering
every call after `latency`: wall time (start -> completed), AI calls, worker CPU seconds and
peak RSS, CPU ms per item, and (at concurrency 1) the orchestration overhead per item =
(wall - calls x latency) / items.
(2) Rate limit: the stub allows `rpm` requests in any 60 s and answers 429 + Retry-After
beyond; two workers run two sites at concurrency 16, (a) with AI_MAX_RPM = rpm (paced in
Redis, shared by both workers), (b) without it (429 + Retry-After only). Reported: achieved
requests/min as a share of the limit, 429s, paused runs, failed items.
(3) In-flight limit (first; `--inflight-only` runs just this): the stub takes 4 requests in
flight and answers 429 + Retry-After: 1 beyond; one worker at concurrency 16, without and
with the adaptive window (AI_ADAPTIVE_CONCURRENCY=0/1). Reported: share of requests refused,
requests in flight on average vs the limit, "provider rate limit: waiting" lines in the log.
"""
import argparse
import json
import os
import signal
import sys
import time

import psutil

from ai_stub import StubState, serve
from common import Env, fresh_database, make_site, stop_all as _stop

DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/bench_ai"


def _run_until_done(app, runs, procs, timeout):
    """Poll until every run ended; sample the workers' RSS. Returns (wall s, peak RSS MB)."""
    from webapp.extensions import db
    from webapp.models import AutomationRun
    ps = [psutil.Process(p.pid) for p in procs]
    peak = 0.0
    t = time.perf_counter()
    while time.perf_counter() - t < timeout:
        peak = max([peak] + [x.memory_info().rss / 2 ** 20 for x in ps if x.is_running()])
        with app.app_context():
            st = [db.session.get(AutomationRun, r).status for r in runs]
            db.session.remove()
        if all(s in ("completed", "failed", "cancelled", "paused") for s in st):
            return time.perf_counter() - t, peak
        time.sleep(0.1)
    raise SystemExit(f"runs {runs} not done after {timeout} s")


def _cpu(procs):
    total = 0.0
    for p in procs:
        try:
            c = psutil.Process(p.pid).cpu_times()
            total += c.user + c.system
        except psutil.NoSuchProcess:
            pass
    return total


def _run_facts(app, run_ids):
    from sqlalchemy import func, select
    from webapp.extensions import db
    from webapp.models import AITaskLog, AutomationRun
    with app.app_context():
        runs = [db.session.get(AutomationRun, r) for r in run_ids]
        items = sum((r.stage_result(n) or {}).get("items_processed", 0) for r in runs for n in range(1, 8))
        failed = sum((r.stage_result(n) or {}).get("items_failed", 0) for r in runs for n in range(1, 8))
        calls = db.session.execute(select(func.count()).select_from(AITaskLog).where(
            AITaskLog.run_id.in_(run_ids))).scalar()
        # Per stage (first run): seconds from its start to its end, and items, to see where time goes.
        stages = {}
        for n in range(1, 8):
            sr = runs[0].stage_result(n) or {}
            if sr.get("started_at") and sr.get("finished_at"):
                from datetime import datetime
                d = (datetime.fromisoformat(sr["finished_at"].replace("Z", "+00:00"))
                     - datetime.fromisoformat(sr["started_at"].replace("Z", "+00:00"))).total_seconds()
                stages[n] = [round(d, 1), sr.get("items_processed", 0)]
        out = {"stage_s_items": stages, "statuses": [r.status for r in runs], "pause_reasons": [r.pause_reason for r in runs if r.pause_reason],
               "items": items, "failed_items": failed, "ai_calls": calls,
               "credits": sum(r.total_credits_used for r in runs)}
        db.session.remove()
    return out


def one_concurrency(env, app, stub_url, state, n_keywords, latency, c):
    from webapp.automation.service import AutomationService
    from webapp.extensions import db
    acc, site = make_site(app, f"c{c}-{int(time.time())}", n_keywords, ai_concurrency=c)
    prof = os.environ.get("BENCH_PROFILE")  # a folder: py-spy samples the worker (collapsed stacks)
    worker = env.spawn(sys.executable, "worker.py", log_name=f"worker-c{c}.log")
    spy = None
    if prof:
        import subprocess
        spy = subprocess.Popen(["py-spy", "record", "--nonblocking", "--format", "raw", "--rate", "100",
                                "-o", f"{prof}/worker-c{c}.txt", "--pid", str(worker.pid)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        env.wait_workers(1)  # worker start-up (imports, stale check) is not the run's time
        cpu0 = _cpu([worker])
        requests0 = state.requests
        with app.app_context():
            run_id = AutomationService(acc).start(site).id
            db.session.remove()
        wall, rss = _run_until_done(app, [run_id], [worker], timeout=3600)
        cpu = _cpu([worker]) - cpu0
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        _stop([worker])
    facts = _run_facts(app, [run_id])
    res = {"concurrency": c, "wall_s": round(wall, 1), **facts, "stub_requests": state.requests - requests0,
           "worker_cpu_s": round(cpu, 2), "worker_cpu_ms_per_item": round(cpu / facts["items"] * 1000, 2),
           "worker_peak_rss_mb": round(rss, 1), "stub_peak_in_flight": state.peak_in_flight}
    if c == 1:
        res["overhead_ms_per_item"] = round((wall - facts["ai_calls"] * latency) / facts["items"] * 1000, 2)
    state.peak_in_flight = 0
    return res


def rate_limited(env, app, n_keywords, rpm, latency, with_max_rpm):
    from webapp.automation.service import AutomationService
    from webapp.extensions import db
    state = StubState(latency=latency, rpm=rpm)
    server, url = serve(state)
    extra = {"AI_PROVIDER": "openai", "OPENAI_BASE_URL": url, "OPENAI_API_KEY": "bench"}
    if with_max_rpm:
        extra["AI_MAX_RPM"] = str(rpm)
    saved = dict(env.vars)
    env.vars.update(extra)
    tag = f"{'paced' if with_max_rpm else 'retry'}-{int(time.time())}"
    sites = [make_site(app, f"rate-{tag}-{i}", n_keywords, ai_concurrency=16) for i in range(2)]
    workers = [env.spawn(sys.executable, "worker.py", log_name=f"worker-rate-{i}.log") for i in range(2)]
    try:
        env.wait_workers(2)
        with app.app_context():
            runs = [AutomationService(a).start(s).id for a, s in sites]
            db.session.remove()
        wall, rss = _run_until_done(app, runs, workers, timeout=3600)
    finally:
        _stop(workers)
        server.shutdown()
        env.vars.clear()
        env.vars.update(saved)
    facts = _run_facts(app, runs)
    ok = sorted(state.ok_times)
    # The achieved rate over whole 60 s windows from the first request (a per-minute limit
    # is judged per minute), and over the whole run.
    first = ok[0]
    full = int((ok[-1] - first) // 60)
    per_window = [sum(1 for t in ok if first + 60 * k <= t < first + 60 * (k + 1)) for k in range(full)]
    overall = len(ok) / max(1e-9, ok[-1] - first) * 60
    return {"mode": "AI_MAX_RPM=limit (paced in Redis)" if with_max_rpm else "no AI_MAX_RPM (429 + Retry-After)",
            "limit_rpm": rpm, "workers": 2, "concurrency": 16, "wall_s": round(wall, 1), **facts,
            "answered": len(ok), "refused_429": state.limited,
            "per_minute_windows": per_window,
            "share_of_limit_full_minutes": round(sum(per_window) / (len(per_window) * rpm), 3) if per_window else None,
            "achieved_rpm_overall": round(overall, 1), "share_of_limit_overall": round(overall / rpm, 3)}


def in_flight_limited(env, app, n_keywords, limit, latency, retry_after, concurrency, adaptive):
    """One worker, one site at `concurrency` against a stub that takes `limit` requests in
    flight and answers 429 + Retry-After beyond: the share of requests refused, and the
    requests in flight on average (while the run's AI calls went on) against the limit."""
    from webapp.automation.service import AutomationService
    from webapp.extensions import db
    state = StubState(latency=latency, max_in_flight=limit, retry_after=retry_after)
    server, url = serve(state)
    saved = dict(env.vars)
    env.vars.update({"AI_PROVIDER": "openai", "OPENAI_BASE_URL": url, "OPENAI_API_KEY": "bench",
                     "AI_ADAPTIVE_CONCURRENCY": "1" if adaptive else "0"})
    acc, site = make_site(app, f"inflight-{int(adaptive)}-{int(time.time())}", n_keywords, ai_concurrency=concurrency)
    worker = env.spawn(sys.executable, "worker.py", log_name=f"worker-inflight-{int(adaptive)}.log")
    try:
        env.wait_workers(1)
        with app.app_context():
            run_id = AutomationService(acc).start(site).id
            db.session.remove()
        wall, _ = _run_until_done(app, [run_id], [worker], timeout=3600)
    finally:
        _stop([worker])
        server.shutdown()
        env.vars.clear()
        env.vars.update(saved)
    facts = _run_facts(app, [run_id])
    # Stage 6 (192 images for 120 keywords) always has more calls to make than the limit:
    # the share of the limit used there is the window's, not the pipeline's gaps.
    from datetime import datetime
    from webapp.models import AutomationRun
    with app.app_context():
        r6 = db.session.get(AutomationRun, run_id).stage_6_result
        db.session.remove()
    t0, t1 = (datetime.fromisoformat(r6[k].replace("Z", "+00:00")).timestamp() for k in ("started_at", "finished_at"))
    stage6 = state.average_in_flight(t0, t1)
    answered = len(state.ok_times)
    span = max(state.ok_times) - min(t for t, _ in state.starts)
    waits = 0
    log = env.work / "logs"
    for f in log.rglob("automation_run.log"):
        if f"/{run_id}/" in str(f):
            waits = sum(1 for ln in f.read_text().splitlines() if "provider rate limit: waiting" in ln)
    return {"mode": "adaptive window (AIMD)" if adaptive else "no window (429 + Retry-After only)",
            "limit_in_flight": limit, "retry_after_s": retry_after, "concurrency": concurrency,
            "wall_s": round(wall, 1), **facts, "answered": answered, "refused_429": state.limited,
            "refused_share": round(state.limited / max(1, state.requests), 3),
            "avg_in_flight": round(state.busy / span, 2), "share_of_limit_used": round(state.busy / span / limit, 3),
            "stage_6_avg_in_flight": round(stage6, 2), "stage_6_share_of_limit": round(stage6 / limit, 3),
            "stage_6_seconds_at_in_flight": state.time_at_levels(t0, t1),
            "log_wait_lines": waits}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keywords", type=int, default=300)
    p.add_argument("--latency-ms", type=int, default=500)
    p.add_argument("--concurrency", type=int, nargs="*", default=[1, 4, 16, 32])
    p.add_argument("--rpm", type=int, default=300)
    p.add_argument("--rate-keywords", type=int, default=300)
    p.add_argument("--skip-rate", action="store_true")
    p.add_argument("--rate-modes", nargs="*", default=["paced", "retry"], choices=["paced", "retry"])
    p.add_argument("--database-url", default=DEFAULT_DB)
    p.add_argument("--inflight-limit", type=int, default=4, help="the in-flight-limited stub's limit")
    p.add_argument("--inflight-keywords", type=int, default=120)
    p.add_argument("--inflight-latency-ms", type=int, default=300)
    p.add_argument("--skip-inflight", action="store_true")
    p.add_argument("--inflight-modes", nargs="*", default=["fixed", "adaptive"], choices=["fixed", "adaptive"])
    p.add_argument("--inflight-only", action="store_true")
    args = p.parse_args()
    latency = args.latency_ms / 1000
    fresh_database(args.database_url)
    state = StubState(latency=latency)
    server, url = serve(state)
    env = Env(args.database_url, AI_PROVIDER="openai", OPENAI_BASE_URL=url, OPENAI_API_KEY="bench",
              AI_ARTICLE_WORDS=600)
    app = env.app()
    out = {"keywords": args.keywords, "latency_ms": args.latency_ms, "runs": [], "rate": [], "inflight": []}
    try:
        if not args.skip_inflight:
            for adaptive in [m == "adaptive" for m in args.inflight_modes]:
                res = in_flight_limited(env, app, args.inflight_keywords, args.inflight_limit,
                                        args.inflight_latency_ms / 1000, 1.0, 16, adaptive)
                out["inflight"].append(res)
                print(json.dumps(res), flush=True)
        if args.inflight_only:
            return out
        for c in args.concurrency:
            res = one_concurrency(env, app, url, state, args.keywords, latency, c)
            out["runs"].append(res)
            print(json.dumps(res), flush=True)
        base = next((r for r in out["runs"] if r["concurrency"] == 1), None)
        if base:
            out["speedup"] = {r["concurrency"]: round(base["wall_s"] / r["wall_s"], 1) for r in out["runs"]}
            print(json.dumps({"speedup_vs_1": out["speedup"]}), flush=True)
        if not args.skip_rate:
            for paced in [m == "paced" for m in args.rate_modes]:
                res = rate_limited(env, app, args.rate_keywords, args.rpm, latency, paced)
                out["rate"].append(res)
                print(json.dumps(res), flush=True)
    finally:
        server.shutdown()
        env.close()
    return out


if __name__ == "__main__":
    main()
