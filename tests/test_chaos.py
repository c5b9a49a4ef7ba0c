"""A shortened chaos scenario against the suite's real database and a Redis server of its
own (so it can be restarted): a few sites, worker SIGKILLs, a web restart, pause/resume,
a cancel and one Redis restart, placed by progress. Every run ends with its fault-free
twin's outputs and credits (a cancelled one with no more than them)."""
import json

import pytest

from bench.chaos import ChaosConfig, run_chaos

pytestmark = pytest.mark.processes  # real processes (see pytest.ini)


def test_short_chaos_run(app, db_url, tmp_path):
    # Faults are placed by progress (shares of the AI calls the twins needed), not by time.
    cfg = ChaosConfig(database_url=db_url, sites=4, keywords=24, accounts=2, workers=2, latency_ms=25,
                      kill_every=0.15, max_kills=3, web_restart_at=0.2, redis_restart_at=0.4, pause_at=0.1,
                      resume_after=0.1, pauses=1, cancel_at=0.12, cancels=1, stale_seconds=4, deadline=300,
                      work_dir=str(tmp_path))
    report = run_chaos(cfg)
    d = report.as_dict()
    assert d["runs"] == 4 and d["completed"] + d["cancelled"] == 4, json.dumps(d, indent=1)
    assert d["cancelled"] >= 1
    assert {f["kind"] for f in d["faults"]} >= {"worker SIGKILL", "web restart", "redis restart"}, d["faults"]
    assert not any(d["duplicates"].values()), d["duplicates"]
    # Every completed run made exactly what its fault-free twin made, for the same credits.
    assert d["twin_mismatches"] == [], json.dumps(d["twin_mismatches"], indent=1)
    assert d["credit_mismatches"] == [] and d["incomplete_outputs"] == [] and d["log_problems"] == [], json.dumps(d, indent=1)
    assert d["max_recovery_s"] < 60 and report.unrecovered == []
    assert report.ok()
