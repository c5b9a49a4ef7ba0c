"""Run logs and images, file backend vs object storage (an S3 API: moto's server mode on
127.0.0.1 — a stand-in for MinIO; real S3 adds network latency on top).

    python bench/storage.py [--lines 12000 --big-mb 0 --seconds 8]

For each backend, in one run (the machine is shared and loaded: compare the ratios):
- writes a 10k-item run's log (--lines lines of ~110 bytes, as the engine writes them: one per
  item plus stage lines) through AutomationLogger: lines/s;
- tail latency: `logs?lines=100` as the API serves it (RunLog.tail + count), p50/p99, and a
  `before` page in the middle of the log (from segments on S3: the first read is cold);
- live-line delay: a writer logs a line every 5 ms carrying its write time; a follower woken
  by Redis pub/sub (what the websocket layer does) reads it; p50/p99 from write to read;
- the same tail through the API over HTTP (gunicorn, as `make run`): what a client waits;
- images served per second: gunicorn (as `make run`) serving /media/images/<id>.png with the
  tenancy check, 8 client threads, the images of a real pipeline run;
- with --big-mb N: the tail and a before-page on an N MB log.
Prints one JSON object.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from common import ROOT, Env, free_port, fresh_database, make_site, make_token

S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


def start_moto():
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            requests.get(url, timeout=1)
            return url, proc
        except requests.RequestException:
            time.sleep(0.1)
    raise SystemExit("moto_server did not start")


def drain(app):
    from rq import Queue, SimpleWorker
    from webapp.redis_conn import get_redis
    from webapp.scheduling import CONTROL_QUEUE
    with app.app_context():
        r = get_redis()
        SimpleWorker([Queue(CONTROL_QUEUE, connection=r), Queue(app.config["RQ_QUEUE"], connection=r)],
                     connection=r).work(burst=True, with_scheduler=False, logging_level="WARNING")


def pct(values, p):
    values = sorted(values)
    return round(values[min(len(values) - 1, int(len(values) * p / 100))] * 1000, 2) if values else None


def make_run(app, acc_id, site_id):
    from webapp.extensions import db
    from webapp.models import AutomationRun
    from webapp.models.base import utcnow
    with app.app_context():
        run = AutomationRun(account_id=acc_id, site_id=site_id, status="completed", ended_at=utcnow())
        db.session.add(run)
        db.session.commit()
        from types import SimpleNamespace
        return SimpleNamespace(id=run.id, account_id=acc_id, site_id=site_id)  # ids are all a log needs


def write_log(app, run, lines, size=110):
    from webapp.automation.logger import AutomationLogger
    from webapp.redis_conn import get_redis
    with app.app_context():
        lg = AutomationLogger(app.config["LOG_DIR"], run, get_redis())
        pad = "x" * max(0, size - 75)
        t0 = time.perf_counter()
        for i in range(1, lines + 1):
            lg.log(f"content {i} 'a title of an article about things {pad}': ok, 1 created, 3 credits", stage=4)
        lg.close()
        took = time.perf_counter() - t0
        from webapp.automation.logger import run_log
        run_log(run).finish()  # the run ends: everything in the store
        return round(lines / took)


def tail_latency(app, run, reps=200):
    from webapp.automation.logger import run_log
    with app.app_context():
        tails, pages = [], []
        total = run_log(run).count()
        for i in range(reps):
            t0 = time.perf_counter()
            rl = run_log(run)
            rl.count()
            got = rl.tail(100)
            tails.append(time.perf_counter() - t0)
            assert len(got) == 100
        cold = None
        for i in range(reps // 4):
            before = total // 2 - i * 1000 if total > reps * 250 else total // 2
            t0 = time.perf_counter()
            first, got = run_log(run).read_before(before, 100)
            pages.append(time.perf_counter() - t0)
            cold = cold if cold is not None else pages[-1]
            assert len(got) == 100
        return {"tail100_p50_ms": pct(tails, 50), "tail100_p99_ms": pct(tails, 99),
                "before_page_p50_ms": pct(pages, 50), "before_page_p99_ms": pct(pages, 99),
                "before_page_first_ms": round(cold * 1000, 2)}


def live_delay(app, run, n=600, every=0.005):
    """A writer and a follower woken by pub/sub, as webapp/web/live.py does."""
    from webapp.automation.logger import AutomationLogger, log_channel, run_log
    from webapp.redis_conn import get_redis
    delays = []
    with app.app_context():
        r = get_redis()
        follower = run_log(run).follower(after=run_log(run).count())
        ps = r.pubsub(ignore_subscribe_messages=True)
        ps.subscribe(log_channel(run.id))
        done = threading.Event()

        def write():
            with app.app_context():
                lg = AutomationLogger(app.config["LOG_DIR"], run, get_redis())
                for _ in range(n):
                    lg.log(f"live {time.time():.6f}")
                    time.sleep(every)
                lg.close()
            done.set()
        threading.Thread(target=write, daemon=True).start()
        while len(delays) < n:
            ps.get_message(timeout=1.0)
            for _n, line in follower.read_new():
                delays.append(time.time() - float(line.split()[-1]))
            if done.is_set() and len(delays) < n:
                for _n, line in follower.read_new():
                    delays.append(time.time() - float(line.split()[-1]))
                break
        ps.close()
    return {"live_p50_ms": pct(delays, 50), "live_p99_ms": pct(delays, 99), "live_lines": len(delays)}


def web_figures(env, app, backend_env, acc_id, site_id, token, seconds, log_run_id):
    from webapp.extensions import db
    from webapp.models import Image
    from webapp.automation.service import AutomationService
    with app.app_context():
        AutomationService(acc_id).start(site_id)
    drain(app)
    with app.app_context():
        ids = db.session.execute(db.select(Image.id).where(Image.site_id == site_id,
                                                           Image.status == "generated")).scalars().all()
        db.session.remove()
    port = free_port()
    web = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "--bind", f"127.0.0.1:{port}",
                            "--workers", "1", "wsgi:app"], cwd=ROOT, env={**env.vars, **S3_ENV, **backend_env},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if requests.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        h = {"Authorization": f"Bearer {token}"}
        api, s = [], requests.Session()
        for _ in range(200):  # the tail as a client sees it: the API over HTTP, one at a time
            t0 = time.perf_counter()
            got = s.get(f"{base}/api/v1/automation/logs/?run_id={log_run_id}&lines=100", headers=h, timeout=30)
            api.append(time.perf_counter() - t0)
            assert got.status_code == 200 and len(got.json()["data"]["lines"]) == 100
        stop = time.time() + seconds
        counts, sizes = [], []

        def client(k):
            s, n = requests.Session(), 0
            while time.time() < stop:
                got = s.get(f"{base}/media/images/{ids[(n + k) % len(ids)]}.png", headers=h, timeout=30)
                assert got.status_code == 200 and got.content[:4] == b"\x89PNG"
                sizes.append(len(got.content))
                n += 1
            counts.append(n)
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(client, range(8)))
        return {"api_tail100_p50_ms": pct(api, 50), "api_tail100_p99_ms": pct(api, 99),
                "images_per_s": round(sum(counts) / seconds), "images": len(ids),
                "image_bytes": int(statistics.mean(sizes))}
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        web.wait(30)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lines", type=int, default=12000)
    p.add_argument("--big-mb", type=int, default=0)
    p.add_argument("--seconds", type=float, default=8)
    args = p.parse_args()
    import boto3
    work_db = f"sqlite:///{Path(os.environ.get('TMPDIR', '/tmp')) / f'bench-storage-{os.getpid()}.db'}"
    fresh_database(work_db)
    env = Env(work_db, AI_ARTICLE_WORDS=150)
    os.environ.update(S3_ENV)
    endpoint, moto = start_moto()
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
    from webapp import create_app
    backends = {"file": {}, "s3": {"STORAGE_URL": "s3://bench/automation", "S3_ENDPOINT_URL": endpoint}}
    out = {"lines": args.lines}
    try:
        for name, extra in backends.items():
            app = create_app(dict(extra))
            acc_id, site_id = make_site(app, f"st-{name}", 8, stage_6_batch_size=4)
            token = make_token(app, acc_id, f"{name}@example.com")
            run = make_run(app, acc_id, site_id)
            res = {"append_lines_per_s": write_log(app, run, args.lines)}
            res.update(tail_latency(app, run))
            res.update(live_delay(app, make_run(app, acc_id, site_id)))
            if args.big_mb:
                big = make_run(app, acc_id, site_id)
                res["big_append_lines_per_s"] = write_log(app, big, args.big_mb * 1024 * 1024 // 110)
                res.update({f"big_{k}": v for k, v in tail_latency(app, big, reps=100).items()})
            res.update(web_figures(env, app, extra, acc_id, site_id, token, args.seconds, run.id))
            out[name] = res
        f, s = out["file"], out["s3"]
        out["ratios_s3_over_file"] = {k: round(s[k] / f[k], 2) for k in f
                                      if isinstance(f[k], (int, float)) and f[k] and k in s and not k.endswith("lines")}
    finally:
        moto.terminate()
        moto.wait(10)
        env.close()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
