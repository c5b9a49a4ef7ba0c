"""One scheduler tick over 10k enabled configs with 1% due.

    python bench/scheduler.py [--configs 10000 --due 0.01 --database-url URL]

Times `check_scheduled_automations` (the indexed query, the next-slot computation, the
executemany update and the enqueue of one start job per due site), 5 ticks, each with a
fresh set of due configs in mixed time zones.
"""
import argparse
import json
import statistics
import time
from datetime import datetime, timedelta

from common import DEFAULT_DB, Env, fresh_database

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Sydney"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--database-url", default=DEFAULT_DB.replace("/bench", "/bench_sched"))
    p.add_argument("--configs", type=int, default=10_000)
    p.add_argument("--due", type=float, default=0.01)
    p.add_argument("--ticks", type=int, default=5)
    args = p.parse_args()
    fresh_database(args.database_url)
    env = Env(args.database_url)
    app = env.app()
    from sqlalchemy import text
    from webapp.automation.scheduled import check_scheduled_automations
    from webapp.extensions import db
    from webapp.models import Account
    from webapp.redis_conn import get_redis
    now = datetime(2026, 6, 1, 12, 0)
    n_due = int(args.configs * args.due)
    with app.app_context():
        acc = Account(name="sched", credits=10**9)
        db.session.add(acc)
        db.session.commit()
        zones = "ARRAY[" + ",".join(f"'{z}'" for z in ZONES) + "]"
        db.session.execute(text(
            f"INSERT INTO site (account_id, name, timezone, created_at) SELECT :a, 'site ' || g, "
            f"({zones})[1 + g % {len(ZONES)}], now() FROM generate_series(1, :n) g"), {"a": acc.id, "n": args.configs})
        db.session.execute(text(
            "INSERT INTO automation_config (account_id, site_id, is_enabled, frequency, scheduled_time, "
            "stage_1_batch_size, stage_2_batch_size, stage_3_batch_size, stage_4_batch_size, stage_5_batch_size, "
            "stage_6_batch_size, within_stage_delay, between_stage_delay, next_run_at, updated_at) "
            "SELECT account_id, id, true, (ARRAY['daily','weekly','monthly'])[1 + id % 3], '03:00', 20, 5, 20, 5, 10, 10, 0, 0, "
            ":later, now() FROM site"), {"later": now + timedelta(days=2)})
        db.session.execute(text("ANALYZE"))
        db.session.commit()
        samples = []
        for tick in range(args.ticks):
            db.session.execute(text(
                "UPDATE automation_config SET next_run_at = :due, scheduled_day = 1 WHERE id IN "
                "(SELECT id FROM automation_config ORDER BY id OFFSET :off LIMIT :n)"),
                {"due": now - timedelta(minutes=1), "off": tick * n_due, "n": n_due})
            db.session.commit()
            get_redis().flushdb()
            t = time.perf_counter()
            queued = check_scheduled_automations(now=now)
            samples.append((time.perf_counter() - t) * 1000)
            assert len(queued) == n_due, len(queued)
            db.session.remove()
        out = {"configs": args.configs, "due_per_tick": n_due, "tick_ms_median": round(statistics.median(samples), 1),
               "tick_ms_max": round(max(samples), 1), "samples_ms": [round(s, 1) for s in samples]}
    env.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
