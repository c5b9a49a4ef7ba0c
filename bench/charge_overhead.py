"""What monthly budgets add to one charge: billing.charge + commit with the month counters
(spend.record_charge) and without them, in interleaved rounds of one run.

    python bench/charge_overhead.py [--database-url URL --rounds 10 --per-round 200]

Both budgets (account and site) are set, so every charge also checks them and the 80 / 100 %
thresholds. The figure is the median of the rounds' mean time per charge.
"""
import argparse
import json
import statistics
import time

from common import DEFAULT_DB, Env, fresh_database


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--database-url", default=DEFAULT_DB.replace("/bench", "/bench_charge"))
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--per-round", type=int, default=200)
    args = p.parse_args()
    fresh_database(args.database_url)
    env = Env(args.database_url)
    app = env.app()
    from webapp.automation import billing, spend
    from webapp.extensions import db
    from webapp.models import Account, AutomationRun
    from webapp.sites import create_site
    try:
        with app.app_context():
            acc = Account(name="charge", credits=0)
            db.session.add(acc)
            db.session.flush()
            billing.top_up(acc, 10**9)
            acc.monthly_budget = 10**9
            site = create_site(acc.id, "s", None, "UTC")
            site.monthly_budget = 10**9
            run = AutomationRun(account_id=acc.id, site_id=site.id, status="running", trigger_type="manual",
                                current_stage=4)
            db.session.add(run)
            db.session.commit()
            real, item = spend.record_charge, [0]

            def one_round(with_counters):
                spend.record_charge = real if with_counters else (lambda *a, **k: None)
                t0 = time.perf_counter()
                for _ in range(args.per_round):
                    item[0] += 1
                    billing.charge(run, 4, "generate_content", "task", item[0], 5, 700, "m")
                    db.session.commit()
                return (time.perf_counter() - t0) / args.per_round * 1000
            times = {False: [], True: []}
            for _ in range(args.rounds):
                for flag in (False, True):
                    times[flag].append(one_round(flag))
            spend.record_charge = real
            base, with_ = statistics.median(times[False]), statistics.median(times[True])
            print(json.dumps({"without_counters_ms": round(base, 3), "with_counters_ms": round(with_, 3),
                              "ratio": round(with_ / base, 2)}))
    finally:
        env.close()


if __name__ == "__main__":
    main()
