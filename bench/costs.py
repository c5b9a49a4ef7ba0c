"""The cost report on an account's year of AI calls (1M AI log rows, 1M ledger rows).

    python bench/costs.py [--rows 1000000 --database-url URL --repeat 7]

Fills one account with `rows` AI calls spread over the 12 months of 2026 (20 sites, 7
stages, 3 models, `--runs` runs), each with its ledger debit, plus a second account's noise,
then times, for one month (~rows/12 calls):

- the report through the API route (`GET /api/v1/costs/?month=…&group_by=…`: auth, the
  grouped query, the month's totals and ledger, JSON) for every grouping, median of `repeat`;
- the grouped query alone (cost_report.rows) for site and stage;
- the CSV export by run, streamed: peak Python memory (tracemalloc) while reading the
  response chunk by chunk, against the same rows built as one JSON list.

Then, in the same run, the same two reports without the report's indexes: what they buy
(`--no-index` drops them before everything instead).
"""
import argparse
import json
import statistics
import time
import tracemalloc

from common import DEFAULT_DB, Env, fresh_database

GROUPS = ("site", "stage", "model", "day", "run")


def fill(db, account_id, other_id, site_ids, other_site, rows, runs, dialect):
    from sqlalchemy import text
    # Runs first (ai_task_log.run_id is a foreign key), spread over the sites.
    db.session.execute(text(
        "INSERT INTO automation_run (account_id, site_id, status, trigger_type, current_stage, started_by, "
        "total_credits_used, recovery_attempts, credits_hold, started_at) "
        "SELECT :acc, :first_site + (i % :n_sites), 'completed', 'manual', 7, 'bench', 0, 0, 0, "
        "TIMESTAMP '2026-01-01' + (i * INTERVAL '1 second' * (365 * 86400 / :runs)) "
        "FROM generate_series(0, :runs - 1) AS i"),
        {"acc": account_id, "first_site": site_ids[0], "n_sites": len(site_ids), "runs": runs})
    first_run = db.session.execute(text("SELECT min(id) FROM automation_run WHERE account_id = :a"),
                                   {"a": account_id}).scalar()
    models = ["gpt-4o-mini", "gpt-4o", "dall-e-3"]
    functions = ["auto_cluster", "generate_ideas", "generate_content", "generate_image_prompts", "generate_image"]
    # i-th call: spread evenly over 2026; site, stage, model and run from i.
    db.session.execute(text(
        "INSERT INTO ai_task_log (account_id, site_id, run_id, stage, function, item_type, item_id, credits, "
        "tokens, model, created_at) "
        "SELECT :acc, :first_site + (i % :n_sites), :first_run + (i % :runs), 1 + (i % 6), "
        "(ARRAY[:f0, :f1, :f2, :f3, :f4])[1 + (i % 5)], 'item', i, 1 + (i % 5), 200 + (i % 900), "
        "(ARRAY[:m0, :m1, :m2])[1 + (i % 3)], "
        "TIMESTAMP '2026-01-01' + (i * INTERVAL '1 microsecond' * (365::bigint * 86400 * 1000000 / :rows)) "
        "FROM generate_series(0, :rows - 1) AS i"),
        {"acc": account_id, "first_site": site_ids[0], "n_sites": len(site_ids), "first_run": first_run,
         "runs": runs, "rows": rows, **{f"f{k}": f for k, f in enumerate(functions)},
         **{f"m{k}": m for k, m in enumerate(models)}})
    db.session.execute(text(
        "INSERT INTO credit_transaction (account_id, amount, balance_after, reason, run_id, ai_task_log_id, created_at) "
        "SELECT account_id, -credits, 0, 'bench', run_id, id, created_at FROM ai_task_log WHERE account_id = :acc"),
        {"acc": account_id})
    # Another account's calls in the same months: the report must not read them.
    db.session.execute(text(
        "INSERT INTO ai_task_log (account_id, site_id, stage, function, item_type, item_id, credits, tokens, model, "
        "created_at) SELECT :acc, :site, 4, 'generate_content', 'item', i, 5, 700, 'gpt-4o', "
        "TIMESTAMP '2026-01-01' + (i * INTERVAL '1 second' * 300) FROM generate_series(0, :n - 1) AS i"),
        {"acc": other_id, "site": other_site, "n": rows // 10})
    db.session.commit()
    # As autovacuum would leave them: statistics, and the visibility map (index-only scans).
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text("VACUUM ANALYZE ai_task_log"))
        c.execute(text("VACUUM ANALYZE credit_transaction"))


def median_ms(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--database-url", default=DEFAULT_DB.replace("/bench", "/bench_costs"))
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=24_000)
    p.add_argument("--month", default="2026-06")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--no-index", action="store_true", help="drop the report's indexes first")
    args = p.parse_args()
    assert args.database_url.startswith("postgresql"), "the 1M-row fill uses generate_series (PostgreSQL)"
    fresh_database(args.database_url)
    env = Env(args.database_url)
    app = env.app()
    from sqlalchemy import text
    from webapp.automation import cost_report
    from webapp.automation.billing import top_up
    from webapp.extensions import db
    from webapp.models import Account, ApiToken, User
    from webapp.sites import create_site
    out = {"rows": args.rows, "month": args.month, "runs": args.runs, "indexed": not args.no_index}
    try:
        with app.app_context():
            acc, other = Account(name="costs", credits=0), Account(name="noise", credits=0)
            db.session.add_all([acc, other])
            db.session.flush()
            top_up(acc, 10**9)
            user = User(email="costs@example.com", account_id=acc.id, role="viewer")
            user.set_password("x" * 12)
            db.session.add(user)
            db.session.commit()
            site_ids = [create_site(acc.id, f"site {i}", None, "UTC").id for i in range(20)]
            other_site = create_site(other.id, "noise", None, "UTC").id
            _tok, raw = ApiToken.issue(user)
            db.session.commit()
            t0 = time.perf_counter()
            fill(db, acc.id, other.id, site_ids, other_site, args.rows, args.runs, "postgresql")
            out["fill_seconds"] = round(time.perf_counter() - t0, 1)
            if args.no_index:
                db.session.execute(text("DROP INDEX ix_ai_log_account_time"))
                db.session.execute(text("DROP INDEX ix_credit_tx_account_time"))
                db.session.commit()
            out["month_calls"] = db.session.execute(text(
                "SELECT count(*) FROM ai_task_log WHERE account_id = :a AND created_at >= :s AND created_at < :e"),
                {"a": acc.id, "s": cost_report.month_bounds(args.month)[0],
                 "e": cost_report.month_bounds(args.month)[1]}).scalar()
            acc_id = acc.id
            db.session.remove()
        client = app.test_client()
        headers = {"Authorization": f"Bearer {raw}"}

        def api(group):
            r = client.get(f"/api/v1/costs/?month={args.month}&group_by={group}", headers=headers)
            assert r.status_code == 200, r.get_json()
            return r
        out["api_ms"] = {}
        for g in GROUPS:
            api(g)  # warm
            out["api_ms"][g] = median_ms(lambda: api(g), args.repeat)
        first = api("stage").get_json()["data"]
        out["check"] = {"rows_credits": sum(r["credits"] for r in first["rows"]),
                        "ledger_debits": first["totals"]["ledger"]["debits"]}
        assert out["check"]["rows_credits"] == out["check"]["ledger_debits"]
        with app.app_context():
            out["query_ms"] = {g: median_ms(lambda: (cost_report.rows(acc_id, args.month, g), db.session.commit()),
                                            args.repeat) for g in ("site", "stage")}
            out["year_by_stage_ms"] = median_ms(lambda: [cost_report.rows(acc_id, f"2026-{m:02d}", "stage")
                                                         for m in range(1, 13)], 3)
            db.session.remove()
        # CSV by run: streamed, chunk by chunk, against the JSON list of the same rows.
        tracemalloc.start()
        r = client.get(f"/api/v1/costs/?month={args.month}&group_by=run&format=csv", headers=headers)
        lines, size = 0, 0
        for chunk in r.response:
            size += len(chunk)
            lines += chunk.count("\n") if isinstance(chunk, str) else chunk.count(b"\n")
        r.close()
        _cur, csv_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        tracemalloc.start()
        rows_json = api("run").get_data()
        _cur, json_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out["csv_run"] = {"lines": lines, "bytes": size, "peak_kib": round(csv_peak / 1024),
                          "json_rows": len(json.loads(rows_json)["data"]["rows"]),
                          "json_peak_kib": round(json_peak / 1024)}
        if not args.no_index:
            # The same data, the same run, without the report's indexes: what they buy.
            with app.app_context():
                db.session.execute(text("DROP INDEX ix_ai_log_account_time"))
                db.session.execute(text("DROP INDEX ix_credit_tx_account_time"))
                db.session.commit()
                db.session.remove()
            out["api_ms_without_indexes"] = {}
            for g in ("site", "stage"):
                api(g)
                out["api_ms_without_indexes"][g] = median_ms(lambda: api(g), 3)
    finally:
        env.close()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
