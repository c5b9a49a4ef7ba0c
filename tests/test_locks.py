"""The Redis locks on a real Redis: only the owner renews or releases, a claim never takes a
lock from another holder, a replace takes it only from the holder it names, every write
carries the TTL; and a start takes over the site lock of a run that has ended, never one of
an active run or of another start in progress."""
import pytest

from webapp.automation.locks import TTLLock, exec_lock_key, site_lock, site_lock_key
from webapp.automation.service import AutomationService
from webapp.errors import BadRequest
from webapp.extensions import db
from webapp.models import AutomationRun
from webapp.redis_conn import get_redis

KEY = "automation:test:lock"


@pytest.fixture
def r(app):
    client = get_redis()
    client.delete(KEY)
    return client


def ttl_ok(r, ttl_s):
    pttl = r.pttl(KEY)
    return 0 < pttl <= ttl_s * 1000


def test_keys_and_site_lock_owner_token(r):
    assert site_lock_key(7) == "automation:site:7:lock" and exec_lock_key("8") == "automation:run:8:exec"
    lock = site_lock(r, 7, 30, run_id=42)
    assert lock.key == site_lock_key(7) and lock.token == "run:42" and lock.ttl_ms == 30_000
    anonymous = site_lock(r, 7, 30)
    assert anonymous.token != lock.token and not anonymous.token.startswith("run:")


def test_acquire_is_exclusive_with_ttl(r):
    a, b = TTLLock(r, KEY, 5), TTLLock(r, KEY, 5)
    assert a.acquire() is True and ttl_ok(r, 5)
    assert b.acquire() is False and a.acquire() is False
    assert r.get(KEY) == a.token.encode() and a.held() and b.held()
    assert a.holder() == a.token


def test_renew_and_release_only_by_owner(r):
    a, b = TTLLock(r, KEY, 5), TTLLock(r, KEY, 5)
    assert a.acquire()
    r.pexpire(KEY, 200)
    assert b.renew() is False and r.pttl(KEY) <= 200
    assert a.renew() is True and r.pttl(KEY) > 1000
    assert b.release() is False and r.get(KEY) == a.token.encode()
    assert a.release() is True and not r.exists(KEY)
    assert a.renew() is False and not r.exists(KEY)  # an expired lock is not brought back by renew
    assert a.holder() is None and not a.held()


def test_retoken_keeps_the_lock_under_a_new_owner(r):
    a = TTLLock(r, KEY, 5)
    assert a.retoken("run:1") is False and not r.exists(KEY)  # nothing to hand over
    assert a.acquire()
    r.pexpire(KEY, 200)
    assert a.retoken("run:1") is True and a.token == "run:1"
    assert r.get(KEY) == b"run:1" and r.pttl(KEY) > 1000


def test_claim_takes_a_free_or_own_lock_only(r):
    mine, other = TTLLock(r, KEY, 5, token="run:1"), TTLLock(r, KEY, 5, token="run:2")
    assert mine.claim() is True and r.get(KEY) == b"run:1" and ttl_ok(r, 5)
    r.pexpire(KEY, 200)
    assert mine.claim() is True and r.pttl(KEY) > 1000  # renewed
    assert other.claim() is False and r.get(KEY) == b"run:1"
    r.delete(KEY)
    assert other.claim() is True and mine.claim() is False and r.get(KEY) == b"run:2"


def test_replace_takes_the_lock_only_from_the_named_holder(r):
    stale, new = TTLLock(r, KEY, 5, token="run:1"), TTLLock(r, KEY, 5)
    assert new.replace("run:1") is False and not r.exists(KEY)
    assert stale.acquire()
    assert new.replace("run:9") is False and r.get(KEY) == b"run:1"
    assert new.replace("run:1") is True and r.get(KEY) == new.token.encode() and ttl_ok(r, 5)


def test_force_takes_the_lock_from_anyone_with_ttl(r):
    a, b = TTLLock(r, KEY, 5), TTLLock(r, KEY, 3)
    assert a.acquire()
    b.force()
    assert r.get(KEY) == b.token.encode() and ttl_ok(r, 3)


# -- a start and the site lock it finds ----------------------------------------------------------

@pytest.fixture
def site(app, factory):
    acc, _ = factory.account(credits=100_000)
    s = factory.site(acc, keywords=5)
    return acc.id, s.id


def test_start_takes_over_the_lock_of_an_ended_run(app, site):
    acc_id, site_id = site
    svc = AutomationService(acc_id)
    ended = svc.start(site_id).id
    svc.cancel(ended)
    r = get_redis()
    key = site_lock_key(site_id)
    for holder in (f"run:{ended}", "run:999999"):  # an ended run; a run the database does not know
        r.set(key, holder, px=60_000)
        run = svc.start(site_id)
        assert run.status == "running" and r.get(key) == f"run:{run.id}".encode() and 0 < r.pttl(key)
        svc.cancel(run.id)


def test_start_leaves_an_active_runs_and_a_starting_lock_alone(app, site):
    acc_id, site_id = site
    svc = AutomationService(acc_id)
    r = get_redis()
    key = site_lock_key(site_id)
    active = svc.start(site_id).id
    with pytest.raises(BadRequest, match=f"run {active} is running"):
        svc.start(site_id)
    assert r.get(key) == f"run:{active}".encode()
    svc.pause(active)
    with pytest.raises(BadRequest, match=f"run {active} is paused"):
        svc.start(site_id)
    svc.cancel(active)
    r.set(key, "0123456789abcdef0123456789abcdef", px=60_000)  # another start in progress
    with pytest.raises(BadRequest, match="already starting"):
        svc.start(site_id)
    assert r.get(key) == b"0123456789abcdef0123456789abcdef"
    assert db.session.query(AutomationRun).filter_by(site_id=site_id).count() == 1
