"""Pipeline throughput with the local provider at zero artificial latency.

    python bench/pipeline.py [--sizes 1000 10000] [--database-url URL]

(1) one worker (a real RQ SimpleWorker in this process, so the AI time can be measured)
over 1k and 10k keywords: items/s per stage, per-item orchestration overhead (stage wall
time minus time inside the provider, per item), and peak RSS; (2) two `worker.py`
processes on two sites of 1k keywords vs one process on one such site.
"""
import argparse
import json
import resource
import time
from datetime import datetime

from common import DEFAULT_DB, Env, fresh_database, make_site


class TimedProvider:
    """Wraps the real provider and accumulates the time spent inside it."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0

    def __getattr__(self, name):
        fn = getattr(self.inner, name)
        if not callable(fn):
            return fn

        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                TimedProvider.total[STAGE_OF[name]] = TimedProvider.total.get(STAGE_OF[name], 0.0) + time.perf_counter() - t
        return timed


TimedProvider.total = {}
STAGE_OF = {"cluster_keywords": 1, "generate_ideas": 2, "generate_content": 4, "generate_image_prompts": 5,
            "generate_image": 6}


SQL_STATS = None  # --sql-stats: {statement kind: [count, seconds]}


def _count_statements(engine):
    """Count the statements the worker sends (and their time on the wire), by kind."""
    from sqlalchemy import event

    @event.listens_for(engine, "before_cursor_execute")
    def before(conn, cursor, statement, params, context, executemany):
        conn.info["t0"] = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def after(conn, cursor, statement, params, context, executemany):
        words = statement.split()
        kind = " ".join(words[:3] if words[0] in ("UPDATE", "INSERT") else words[:1])
        if words[0] == "SELECT":
            kind = "SELECT " + (statement.split(" FROM ", 1)[1].split()[0] if " FROM " in statement else "")
        c = SQL_STATS.setdefault(kind, [0, 0.0])
        c[0] += 1
        c[1] += time.perf_counter() - conn.info.pop("t0", time.perf_counter())


def one_worker(env, app, n):
    from rq import Queue, SimpleWorker
    from webapp.automation import tasks
    from webapp.automation.service import AutomationService
    from webapp.extensions import db
    from webapp.models import AutomationRun
    from webapp.redis_conn import get_redis
    # Concurrency 1: provider time is then sequential and can be subtracted from the wall time
    # (bench/ai_throughput.py measures concurrent AI calls).
    acc_id, site_id = make_site(app, f"single-{n}", n, ai_concurrency=1)
    real = tasks.get_provider
    tasks.get_provider = lambda cfg: TimedProvider(real(cfg))
    TimedProvider.total = {}
    with app.app_context():
        run_id = AutomationService(acc_id).start(site_id).id
        r = get_redis()
        if SQL_STATS is not None:
            _count_statements(db.engine)
        t = time.perf_counter()
        SimpleWorker([Queue(app.config["RQ_QUEUE"], connection=r)], connection=r).work(
            burst=True, with_scheduler=False, logging_level="WARNING")
        wall = time.perf_counter() - t
        db.session.remove()
        run = db.session.get(AutomationRun, run_id)
        assert run.status == "completed", run.status
        stages = {}
        for s in range(1, 8):
            res = run.stage_result(s)
            secs = (datetime.fromisoformat(res["finished_at"].rstrip("Z")) -
                    datetime.fromisoformat(res["started_at"].rstrip("Z"))).total_seconds()
            items = res["items_processed"]
            ai = TimedProvider.total.get(s, 0.0)
            stages[s] = {"items": items, "seconds": round(secs, 2), "items_per_s": round(items / secs, 1) if secs else None,
                         "ai_seconds": round(ai, 2),
                         "overhead_ms_per_item": round((secs - ai) / items * 1000, 2) if items else None}
        db.session.remove()
    tasks.get_provider = real
    total_items = sum(s["items"] for s in stages.values())
    total_ai = sum(TimedProvider.total.values())
    return {"keywords": n, "wall_s": round(wall, 1), "items": total_items,
            "overhead_ms_per_item": round((wall - total_ai) / total_items * 1000, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "stages": stages}


def parallel(env, app, n):
    """Wall time of one site with one worker process vs two sites with two worker processes."""
    import sys
    from webapp.automation.service import AutomationService
    from webapp.extensions import db
    from webapp.models import AutomationRun

    def timed_runs(sites, workers):
        with app.app_context():
            runs = [AutomationService(a).start(s).id for a, s in sites]
            db.session.remove()
        procs = [env.spawn(sys.executable, "worker.py", log_name="workers.log") for _ in range(workers)]
        t = time.perf_counter()
        try:
            while True:
                with app.app_context():
                    st = [db.session.get(AutomationRun, r).status for r in runs]
                    db.session.remove()
                if all(s == "completed" for s in st):
                    break
                time.sleep(0.2)
            return time.perf_counter() - t
        finally:
            import os
            import signal
            for p in procs:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(30)

    one = timed_runs([make_site(app, f"par-a-{n}", n)], 1)
    two = timed_runs([make_site(app, f"par-b-{n}", n), make_site(app, f"par-c-{n}", n)], 2)
    return {"keywords_per_site": n, "one_site_one_worker_s": round(one, 1), "two_sites_two_workers_s": round(two, 1),
            "parallel_efficiency": round(one / two, 2)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--database-url", default=DEFAULT_DB)
    p.add_argument("--parallel-size", type=int, default=1000)
    p.add_argument("--sql-stats", action="store_true", help="count the worker's statements by kind")
    args = p.parse_args()
    fresh_database(args.database_url)
    env = Env(args.database_url, AI_LOCAL_LATENCY_MS=0, AI_ARTICLE_WORDS=600)
    app = env.app()
    out = {"single": [], "parallel": None}
    global SQL_STATS
    if args.sql_stats:
        SQL_STATS = {}
    try:
        for n in args.sizes:
            res = one_worker(env, app, n)
            out["single"].append(res)
            print(json.dumps(res), flush=True)
            if SQL_STATS is not None:
                per_item = {k: [v[0], round(v[0] / res["items"], 2), round(v[1] * 1000 / res["items"], 3)]
                            for k, v in sorted(SQL_STATS.items(), key=lambda kv: -kv[1][1])}
                print(json.dumps({"statements (count, per item, ms per item)": per_item}), flush=True)
                SQL_STATS.clear()
        if len(out["single"]) > 1:
            a, b = out["single"][0], out["single"][-1]
            out["linearity"] = {"size_ratio": b["keywords"] / a["keywords"], "time_ratio": round(b["wall_s"] / a["wall_s"], 2),
                                "items_ratio": round(b["items"] / a["items"], 2)}
            print(json.dumps(out["linearity"]), flush=True)
        if args.parallel_size:
            out["parallel"] = parallel(env, app, args.parallel_size)
            print(json.dumps(out["parallel"]), flush=True)
    finally:
        env.close()
    return out


if __name__ == "__main__":
    main()
