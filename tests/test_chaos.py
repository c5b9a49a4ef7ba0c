"""A shortened chaos scenario against the suite's real database and a Redis server of its
own (so it can be restarted): a few sites, worker SIGKILLs, a web restart, pause/resume,
a cancel and one Redis restart. Nothing lost, duplicated or mis-charged."""
import json

from bench.chaos import ChaosConfig, run_chaos


def test_short_chaos_run(app, db_url, tmp_path):
    cfg = ChaosConfig(database_url=db_url, sites=4, keywords=40, accounts=2, workers=2, latency_ms=25,
                      kill_every=3.0, max_kills=3, web_restart_at=2.0, redis_restart_at=6.0, pause_at=1.0,
                      resume_after=3.0, pauses=1, cancel_at=1.5, cancels=1, stale_seconds=4, deadline=240,
                      work_dir=str(tmp_path))
    report = run_chaos(cfg)
    d = report.as_dict()
    assert d["runs"] == 4 and d["completed"] + d["cancelled"] == 4, json.dumps(d, indent=1)
    assert d["cancelled"] >= 1
    assert {f["kind"] for f in d["faults"]} >= {"worker SIGKILL", "web restart", "redis restart"}, d["faults"]
    assert not any(d["duplicates"].values()), d["duplicates"]
    assert d["credit_mismatches"] == [] and d["incomplete_outputs"] == [] and d["log_problems"] == [], json.dumps(d, indent=1)
    assert d["max_recovery_s"] < 60 and report.unrecovered == []
    assert report.ok()
