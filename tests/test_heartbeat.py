"""The job's heartbeat thread on its own (real Redis, real database, a real thread): it
renews the exec and site locks and writes `heartbeat_at` on its clock; it reports the run
lost once the run is paused, cancelled or taken over (token), or another job holds the exec
lock; once lost it keeps only the exec lock alive (calls may still be finishing) and never
writes again; it never takes the site lock from a new holder."""
import threading
from datetime import timedelta

import pytest
from sqlalchemy import update

from webapp.automation.heartbeat import Heartbeat, interval_for
from webapp.automation.locks import TTLLock, exec_lock_key, site_lock, site_lock_key
from webapp.automation.service import AutomationService
from webapp.extensions import db
from webapp.models import AutomationRun
from webapp.models.base import utcnow
from webapp.redis_conn import get_redis

from conftest import wait_for

INTERVAL = 0.2


def test_interval_is_a_quarter_of_the_stale_window_between_limits():
    assert interval_for(20) == 5.0
    assert interval_for(8) == 2.0
    assert interval_for(60) == 5.0     # at most 5 s apart
    assert interval_for(0.4) == 0.2    # at least 0.2 s apart


@pytest.fixture
def beating(app, factory):
    """A running run and a started Heartbeat for it; yields (run_id, beat, lost, r)."""
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc, keywords=4)
    run = AutomationService(acc.id).start(site.id)
    run_id, site_id, token = run.id, site.id, run.job_token
    r = get_redis()
    r.delete(site_lock_key(site_id))  # the start's own lock: the beat must (re)claim it
    # Aged, so that a beat is visible as a change of heartbeat_at.
    db.session.execute(update(AutomationRun).where(AutomationRun.id == run_id)
                       .values(heartbeat_at=utcnow() - timedelta(minutes=5)))
    db.session.commit()
    exec_lock = TTLLock(r, exec_lock_key(run_id), 2)
    assert exec_lock.acquire()
    lost = threading.Event()
    beat = Heartbeat(app, run_id, token, exec_lock, site_lock(r, site_id, 2, run_id=run_id), INTERVAL, lost.set)
    beat.site_id = site_id
    beat.start()
    yield run_id, beat, lost, r
    beat.stop()
    assert not beat.is_alive()


def _heartbeat_age(run_id):
    db.session.expire_all()
    row = db.session.get(AutomationRun, run_id)
    db.session.commit()
    return (utcnow() - row.heartbeat_at).total_seconds()


def test_beats_renew_both_locks_and_write_heartbeat_at(app, beating):
    run_id, beat, lost, r = beating
    wait_for(lambda: beat.beats >= 3, timeout=20, message="three beats")
    assert _heartbeat_age(run_id) < 5
    assert r.get(site_lock_key(beat.site_id)) == f"run:{run_id}".encode()
    assert r.get(exec_lock_key(run_id)) == beat.exec_lock.token.encode()
    # Renewed, not merely set once: the exec lock's TTL (2 s) is kept topped up.
    for _ in range(5):
        assert r.pttl(exec_lock_key(run_id)) > 1000
        threading.Event().wait(0.5)
    assert r.pttl(site_lock_key(beat.site_id)) > 0 and not lost.is_set()


@pytest.mark.parametrize("change", ["paused", "cancelled", "new token"])
def test_a_run_no_longer_ours_is_reported_lost_and_never_written_again(app, beating, change):
    run_id, beat, lost, r = beating
    wait_for(lambda: beat.beats >= 1, timeout=20, message="a first beat")
    values = {"job_token": "someone-else"} if change == "new token" else {"status": change}
    old = utcnow() - timedelta(minutes=5)
    db.session.execute(update(AutomationRun).where(AutomationRun.id == run_id).values(heartbeat_at=old, **values))
    db.session.commit()
    assert lost.wait(10), "the heartbeat did not report the run lost"
    beats = beat.beats
    threading.Event().wait(INTERVAL * 5)
    assert _heartbeat_age(run_id) > 200  # nothing written after the run changed hands
    # Lost, but the job's calls may still be finishing: the exec lock stays ours meanwhile.
    assert r.get(exec_lock_key(run_id)) == beat.exec_lock.token.encode()
    assert r.pttl(exec_lock_key(run_id)) > 1000
    assert beat.beats == beats and beat.is_alive()


def test_an_exec_lock_taken_by_another_job_stops_the_job_and_the_site_lock_is_never_taken(app, beating):
    run_id, beat, lost, r = beating
    wait_for(lambda: beat.beats >= 1, timeout=20, message="a first beat")
    # A new start took the site (this run ended meanwhile) and another job the exec lock.
    r.set(site_lock_key(beat.site_id), "starting-elsewhere", px=60_000)
    r.set(exec_lock_key(run_id), "other-job", px=60_000)
    assert lost.wait(10)
    threading.Event().wait(INTERVAL * 3)
    assert r.get(site_lock_key(beat.site_id)) == b"starting-elsewhere"
    assert r.get(exec_lock_key(run_id)) == b"other-job"


def test_an_expired_exec_lock_is_taken_back_when_free(app, beating):
    run_id, beat, lost, r = beating
    wait_for(lambda: beat.beats >= 1, timeout=20, message="a first beat")
    r.delete(exec_lock_key(run_id))  # e.g. expired during a long stall of this process
    wait_for(lambda: r.get(exec_lock_key(run_id)) == beat.exec_lock.token.encode(), timeout=10,
             message="exec lock re-acquired")
    n = beat.beats
    wait_for(lambda: beat.beats > n, timeout=10, message="beats go on")
    assert not lost.is_set()


def test_stop_ends_the_thread_at_once(app, beating):
    run_id, beat, lost, r = beating
    beat.interval = 30  # the next wait would be long: stop must not sit it out
    threading.Event().wait(INTERVAL * 2)
    t = threading.Event()
    done = []

    def stopper():
        beat.stop()
        done.append(True)
        t.set()
    threading.Thread(target=stopper).start()
    assert t.wait(5) and done and not beat.is_alive()


def test_a_tokenless_job_beats_for_its_own_run_only(app, factory):
    """A job queued without a token (before tokens existed) still writes only its run's row."""
    acc, _ = factory.account(credits=100_000)
    runs = [AutomationService(acc.id).start(factory.site(acc, name=f"Blog {i}", keywords=4).id).id for i in range(2)]
    old = utcnow() - timedelta(minutes=5)
    db.session.execute(update(AutomationRun).where(AutomationRun.id.in_(runs)).values(heartbeat_at=old))
    db.session.commit()
    r = get_redis()
    lock = TTLLock(r, exec_lock_key(runs[0]), 2)
    assert lock.acquire()
    beat = Heartbeat(app, runs[0], None, lock, TTLLock(r, "automation:test:site", 2), INTERVAL, lambda: None)
    beat.start()
    try:
        wait_for(lambda: beat.beats >= 2, timeout=20, message="two beats")
    finally:
        beat.stop()
    assert _heartbeat_age(runs[0]) < 5 and _heartbeat_age(runs[1]) > 200


def test_redis_unreachable_is_not_a_lost_run(app, beating):
    """Redis down (here: its address refuses connections) must not stop the job: the beats
    go on writing the database, and the job is not told to stop."""
    import socket

    import redis
    run_id, beat, lost, r = beating
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    wait_for(lambda: beat.beats >= 1, timeout=20, message="a first beat")
    # No client-side retries (redis-py's default waits out 3 with backoff, ~7 s a command): the
    # beat meets the refused connection at once, as often as it likes.
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    dead = redis.Redis(host="127.0.0.1", port=free_port, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    beat.exec_lock.r = dead
    beat.site_lock.r = dead
    n = beat.beats
    wait_for(lambda: beat.beats >= n + 2, timeout=90, message="beats without Redis")
    assert not lost.is_set() and _heartbeat_age(run_id) < 30


def test_database_unreachable_is_not_a_lost_run(app, tmp_path, monkeypatch):
    """The beat's database write failing (here: the database file cannot be opened) must not
    stop the job either: its own writes will tell; the exec lock is still renewed."""
    from webapp import create_app
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/missing/dir/app.db")
    broken = create_app({"TESTING": True})
    r = get_redis()
    lock = TTLLock(r, exec_lock_key(999_999), 2)
    assert lock.acquire()
    lost = threading.Event()
    beat = Heartbeat(broken, 999_999, "t", lock, TTLLock(r, "automation:test:site2", 2), INTERVAL, lost.set)
    beat.start()
    try:
        for _ in range(6):  # 1.5 s: several beats, each failing to write
            threading.Event().wait(0.25)
            assert r.pttl(exec_lock_key(999_999)) > 1000
        assert not lost.is_set() and beat.beats == 0
    finally:
        beat.stop()
        lock.release()
