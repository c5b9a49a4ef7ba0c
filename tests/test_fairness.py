"""Fair share of the workers between accounts: fair dispatch (dispatch.py), account limits that
queue (limits.py), notifications on workers of their own with a hard deadline (notify/).

Real Redis, real database, real RQ; the interleaving and the queue run with real `worker.py`
processes where the order of processed jobs is what is asserted."""
import socket
import threading
import time

import pytest
from rq import Queue
from rq.job import Job
from rq.registry import FinishedJobRegistry
from sqlalchemy import func, select

from webapp.automation import dispatch, limits
from webapp.automation.service import AutomationService
from webapp.errors import BadRequest
from webapp.extensions import db
from webapp.models import AITaskLog, Account, AutomationRun, CreditTransaction
from webapp.redis_conn import get_redis

from conftest import drain, fresh_run, stop_process, wait_for
from conftest import start_worker as _start_worker

TASK = "webapp.automation.tasks.resume_automation_task"


def start_worker(app_env, *args, extra_env=None):
    """conftest's worker.py with its output in a file: these tests run hundreds of jobs."""
    import tempfile
    return _start_worker(app_env, *args, extra_env=extra_env, stdout=tempfile.TemporaryFile())


def _push(app, account_id, run_id, weight=None):
    q = dispatch.FairQueue(app.config["RQ_QUEUE"], account_id, weight, connection=get_redis())
    return q.enqueue(TASK, run_id, None, job_id=dispatch.job_id(run_id, account_id, f"{time.monotonic_ns()}")).id


def _take(app):
    """What a free worker gets next (RQ's own list), topping up as a worker does."""
    r = get_redis()
    q = Queue(app.config["RQ_QUEUE"], connection=r)
    job_id = r.lpop(q.key)
    dispatch.top_up(r, app.config["RQ_QUEUE"])
    return job_id.decode() if job_id else None


def test_the_next_job_comes_from_the_account_with_least_worker_time(app):
    r = get_redis()
    # Account 1 has six runs' jobs waiting, account 2 one: 2 is served second, not seventh.
    for run in range(1, 7):
        _push(app, 1, run)
    _push(app, 2, 100)
    order = [dispatch.account_of(_take(app)) for _ in range(7)]
    assert order[:3] in ([1, 2, 1], [2, 1, 1]), order
    assert order.count(2) == 1 and _take(app) is None
    # Only DEPTH jobs ever sit in RQ's list; the rest wait in the accounts' ready lists.
    for run in range(1, 5):
        _push(app, 1, run)
    assert r.llen(Queue(app.config["RQ_QUEUE"], connection=r).key) == dispatch.DEPTH
    assert dispatch.backlog(r) == {1: 4 - dispatch.DEPTH}


def test_weight_gives_a_proportional_share_and_runs_of_one_account_take_turns(app):
    for i in range(30):
        _push(app, 1, 1 + i % 3, weight=2)  # three runs of account 1, round-robin inside it
        _push(app, 2, 10, weight=1)
    taken = [_take(app) for _ in range(30)]
    accounts = [dispatch.account_of(j) for j in taken]
    # Each hand-out charges the estimate / weight: account 1 gets two turns for each of 2's.
    assert 19 <= accounts.count(1) <= 21, accounts
    runs_of_1 = [int(j.split("-")[2]) for j in taken if dispatch.account_of(j) == 1]
    assert runs_of_1[:6] == [1, 2, 3, 1, 2, 3]


def test_an_idle_account_earns_no_credit_to_spend_later(app):
    r = get_redis()
    for run in range(1, 11):  # account 1 works alone for a while
        _push(app, 1, run)
    for _ in range(10):
        job = _take(app)
        dispatch.charge(r, dispatch.account_of(job), 5.0)
    # Account 2 joins at the floor, not at zero: it does not get the next ten turns in a row.
    for run in range(11, 21):
        _push(app, 1, run)
    for run in range(100, 110):
        _push(app, 2, run)
    first_ten = [dispatch.account_of(_take(app)) for _ in range(10)]
    assert 4 <= first_ten.count(2) <= 7, first_ten


def _two_accounts(factory, sites_a, keywords=6):
    a, _ = factory.account(name="Big", credits=1_000_000, email="big@example.com")
    b, _ = factory.account(name="Small", credits=1_000_000, email="small@example.com")
    a_sites = [factory.site(a, name=f"A{i}", keywords=keywords) for i in range(sites_a)]
    b_site = factory.site(b, name="B0", keywords=keywords)
    for s in [*a_sites, b_site]:
        factory.fast_config(s, stage_1_batch_size=2, stage_4_batch_size=1, stage_5_batch_size=2, ai_concurrency=1)
    return a.id, [s.id for s in a_sites], b.id, b_site.id


@pytest.mark.processes
def test_two_accounts_runs_interleave_fairly_on_a_real_worker(app, app_env, factory):
    a, a_sites, b, b_site = _two_accounts(factory, sites_a=4)
    a_runs = [AutomationService(a).start(s).id for s in a_sites]
    b_run = AutomationService(b).start(b_site).id
    # One batch per job, so the order of jobs is the order of turns.
    w = start_worker(app_env, extra_env={"JOB_SLICE_SECONDS": "0", "AI_LOCAL_LATENCY_MS": "5"})
    try:
        wait_for(lambda: all(fresh_run(i).status == "completed" for i in [*a_runs, b_run]), timeout=120,
                 message="all runs completed")
    finally:
        stop_process(w)
    r = get_redis()
    reg = FinishedJobRegistry(app.config["RQ_QUEUE"], connection=r)
    jobs = [j for j in Job.fetch_many(reg.get_job_ids(), connection=r) if j is not None]
    order = [dispatch.account_of(j.id) for j in sorted(jobs, key=lambda j: j.started_at)]
    b_turns = [i for i, acc in enumerate(order) if acc == b]
    assert b_turns, order
    # While B had work, the two accounts shared the worker's *time* (turns per run would have
    # given A's four runs four times B's): up to B's last turn, A's worker seconds exceed B's
    # by at most the longest job (the one handed out last before the books were squared).
    # Seconds, not turns: a job made slow by a loaded machine rightly buys its account fewer
    # turns, so counting turns (one A job at most between two of B's) failed under load.
    ordered = sorted(jobs, key=lambda j: j.started_at)
    secs = [(j.ended_at - j.started_at).total_seconds() for j in ordered]
    upto = b_turns[-1] + 1
    a_secs = sum(t for t, acc in zip(secs[:upto], order) if acc == a)
    b_secs = sum(t for t, acc in zip(secs[:upto], order) if acc == b)
    assert a_secs <= b_secs + max(secs[:upto]) + 0.05, (order, secs)
    gaps = [b_turns[i + 1] - b_turns[i] - 1 for i in range(len(b_turns) - 1)]
    assert sorted(gaps)[len(gaps) // 2] <= 1, order  # typically one A job between two of B's
    assert b_turns[0] <= 1, order
    # B's run was done while A still had most of its work ahead.
    assert b_turns[-1] < len(order) * 0.5, order


def test_account_limit_queues_runs_in_order_and_cancel_of_a_queued_run_charges_nothing(app, factory, client):
    acc, user = factory.account(credits=1_000_000)
    token = factory.token(user)
    sites = [factory.site(acc, name=f"S{i}", keywords=4) for i in range(4)]
    for s in sites:
        factory.fast_config(s)
    db.session.get(Account, acc.id).max_active_runs = 2
    db.session.commit()
    acc_id, site_ids = acc.id, [s.id for s in sites]
    svc = AutomationService(acc_id, actor="t")
    runs = [svc.start(s) for s in site_ids]
    assert [r.status for r in runs] == ["running", "running", "queued", "queued"]
    runs = [fresh_run(r.id) for r in runs]
    info = [limits.queue_info(fresh_run(r.id)) for r in runs[2:]]
    assert info == [(1, "account limit: 2 of 2 runs active"), (2, "account limit: 2 of 2 runs active")]
    # The API shows the same; pause and resume answer 400 on a queued run.
    cur = client.get(f"/api/v1/automation/current_run/?site_id={site_ids[3]}",
                     headers={"Authorization": f"Bearer {token}"}).get_json()["data"]["run"]
    assert cur["status"] == "queued" and cur["queue_position"] == 2 and "2 of 2" in cur["queued_reason"]
    for action in ("pause", "resume"):
        resp = client.post(f"/api/v1/automation/{action}/?run_id={runs[3].id}",
                           headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 400 and "queued" in resp.get_json()["error"]
    # The site is held: a second run of it is refused as before.
    with pytest.raises(BadRequest, match="already active"):
        svc.start(site_ids[2])
    # Credits are held for queued runs too.
    run_ids = [r.id for r in runs]
    holds = [fresh_run(i).credits_hold for i in run_ids]
    held_before = AutomationService(acc_id).estimate(site_ids[0])["held"]
    assert held_before == sum(holds)
    # Cancel the last queued run: nothing charged, its hold released, its site free.
    balance = db.session.get(Account, acc_id).credits
    svc.cancel(run_ids[3])
    assert fresh_run(run_ids[3]).status == "cancelled" and fresh_run(run_ids[3]).total_credits_used == 0
    assert db.session.get(Account, acc_id).credits == balance
    assert not db.session.execute(select(CreditTransaction).where(CreditTransaction.run_id == run_ids[3])).first()
    assert AutomationService(acc_id).estimate(site_ids[0])["held"] == held_before - holds[3]
    # The queued run starts by itself, in order, when a slot frees; then all complete.
    drain(app)
    done = [fresh_run(i) for i in run_ids]
    assert [r.status for r in done] == ["completed", "completed", "completed", "cancelled"]
    assert done[2].started_at >= min(done[0].ended_at, done[1].ended_at)
    assert done[2].total_credits_used > 0
    svc.start(site_ids[3])  # its site is free again


@pytest.mark.processes
def test_a_queued_run_started_later_pauses_resumes_and_cancels_as_any_run(app, app_env, factory):
    acc, _ = factory.account(credits=1_000_000)
    first = factory.site(acc, name="First", keywords=30)
    second = factory.site(acc, name="Second", keywords=30)
    for s in (first, second):
        factory.fast_config(s, stage_4_batch_size=1)
    db.session.get(Account, acc.id).max_active_runs = 1
    db.session.commit()
    svc = AutomationService(acc.id, actor="t")
    r1 = svc.start(first.id).id
    r2 = svc.start(second.id).id
    assert fresh_run(r2).status == "queued"
    w = start_worker(app_env, extra_env={"AI_LOCAL_LATENCY_MS": "40"})
    try:
        svc.cancel(r1)  # frees the slot at once: r2 leaves the queue
        wait_for(lambda: fresh_run(r2).status == "running" and (fresh_run(r2).stage_1_result or {})
                 .get("items_processed"), timeout=60, message="the queued run started and processed items")
        svc.pause(r2)
        paused = fresh_run(r2)
        time.sleep(1.0)
        assert fresh_run(r2).status == "paused"
        stage = paused.current_stage
        before = db.session.execute(select(func.count(AITaskLog.id)).where(AITaskLog.run_id == r2)).scalar()
        time.sleep(1.0)
        # Nothing more was processed while paused (an item in flight may finish: within 1 s).
        assert db.session.execute(select(func.count(AITaskLog.id)).where(AITaskLog.run_id == r2)).scalar() == before
        svc.resume(r2)
        wait_for(lambda: fresh_run(r2).status == "completed", timeout=120, message="completed after resume")
    finally:
        stop_process(w)
    run = fresh_run(r2)
    ledger = db.session.execute(select(func.sum(CreditTransaction.amount)).where(
        CreditTransaction.run_id == r2)).scalar()
    assert -ledger == run.total_credits_used > 0 and stage >= 1


def test_a_scheduled_burst_over_the_limit_queues_instead_of_refusing(app, factory):
    acc, _ = factory.account(credits=1_000_000)
    sites = [factory.site(acc, name=f"S{i}", keywords=2) for i in range(5)]
    for s in sites:
        factory.fast_config(s)
    db.session.get(Account, acc.id).max_active_runs = 2
    db.session.commit()
    runs = [AutomationService(acc.id, actor="scheduler").start(s.id, trigger_type="scheduled") for s in sites]
    assert sorted(r.status for r in runs) == ["queued"] * 3 + ["running"] * 2
    run_ids = [r.id for r in runs]
    drain(app)
    assert all(fresh_run(i).status == "completed" for i in run_ids)


class Drip:
    """A webhook receiver that answers one header byte every `every` seconds."""

    def __init__(self, every=1.0):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.every, self.accepted, self.conns = every, 0, []
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(c)
            threading.Thread(target=self._drip, args=(c,), daemon=True).start()

    def _drip(self, c):
        try:
            c.recv(65536)
            for ch in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 600:
                c.send(bytes([ch]))
                time.sleep(self.every)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        """Stop listening and drop the connections held: an attempt in flight ends at once (a
        connection error) instead of at the webhook timeout, so a worker stopped after this
        does not wait it out."""
        try:
            # A thread blocked in accept() keeps a closed socket listening (Linux): shut it
            # down first, which wakes the accept, so no attempt connects after this.
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def test_a_dripping_receiver_attempt_ends_at_the_webhook_timeout(app):
    from webapp.notify import targets
    drip = Drip(every=0.5)
    try:
        t0 = time.monotonic()
        with pytest.raises(targets.DeadlineExceeded, match="within 2 s"):
            targets.post(drip.url, b"{}", {}, 2.0, allow_private=True)
        took = time.monotonic() - t0
    finally:
        drip.close()
    # 600 bytes at 0.5 s each would be 300 s; per-read timeouts never fire on a drip.
    assert took < 30


class SlowConnect:
    """An https receiver slow to connect, then dripping: its listen queue is full when the
    attempt begins (the kernel drops the SYN; the client sends it again a second later), its
    TLS handshake answers after `handshake` s, and then it answers one byte every `every` s.
    So the connection is made only after the attempt's deadline, inside its connect timeouts
    (TCP, then the handshake's own), while urllib3 has not yet set the connection's socket."""

    def __init__(self, tmp_path, handshake=0.8, every=0.3):
        import ssl
        import subprocess
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
        self.cert = str(cert)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.handshake, self.every = handshake, every
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}/hook"
        self.filler = socket.create_connection(("127.0.0.1", self.port))  # the queue is full now
        self.closed = False

    def start(self):
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        import ssl
        try:
            time.sleep(0.3)
            self.sock.accept()[0].close()  # room for the attempt's SYN, sent again at ~1 s
            c, _ = self.sock.accept()
            inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = self.ctx.wrap_bio(inc, out, server_side=True)
            first = True
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    pending = out.read()
                    if pending:
                        if first:
                            time.sleep(self.handshake)
                            first = False
                        c.sendall(pending)
                    data = c.recv(65536)
                    if not data:
                        return
                    inc.write(data)
            c.sendall(out.read())
            for ch in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 600:
                if self.closed:
                    return
                tls.write(bytes([ch]))
                c.sendall(out.read())
                time.sleep(self.every)
        except (OSError, ssl.SSLError):
            pass

    def close(self):
        self.closed = True
        self.filler.close()
        self.sock.close()


def test_an_attempt_connected_after_its_deadline_ends_at_the_webhook_timeout(app, tmp_path):
    """Kills: the deadline's watchdog finding no socket while the connection is being made
    (urllib3 sets it once the TLS handshake is done), and no check of the time left once
    connected: the attempt then drips on, each read within its timeout. Bounded: the
    attempt runs on a thread joined with a timeout."""
    from webapp.notify import targets
    slow = SlowConnect(tmp_path)
    outcome = {}

    def attempt():
        t0 = time.monotonic()
        try:
            targets.post(slow.url, b"{}", {}, 1.5, allow_private=True, ca_certs=slow.cert)
            outcome["error"] = None
        except Exception as e:
            outcome["error"] = e
        outcome["took"] = time.monotonic() - t0
    t = threading.Thread(target=attempt, daemon=True)
    try:
        slow.start()
        t.start()
        t.join(15)
    finally:
        slow.close()
    assert not t.is_alive(), "the attempt was still going 15 s after its 1.5 s deadline"
    assert isinstance(outcome["error"], targets.DeadlineExceeded), outcome
    assert outcome["took"] < 4, outcome


def test_a_slow_name_resolution_counts_against_the_webhook_timeout(app, monkeypatch):
    """Kills: the deadline starting after the name was resolved (a resolver answering after
    1.2 s gave a 1 s attempt 2.2 s). The receiver drips, so only the deadline ends it."""
    from webapp.notify import targets
    drip = Drip(every=0.5)
    port = drip.sock.getsockname()[1]
    real = socket.getaddrinfo

    def slow_dns(host, *a, **kw):
        if host == "hooks.example.test":
            time.sleep(1.2)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, *a, **kw)
    monkeypatch.setattr(socket, "getaddrinfo", slow_dns)
    try:
        t0 = time.monotonic()
        with pytest.raises(targets.DeadlineExceeded, match="within 1 s"):
            targets.post(f"http://hooks.example.test:{port}/hook", b"{}", {}, 1.0, allow_private=True)
        took = time.monotonic() - t0
    finally:
        drip.close()
    assert took < 1.9, took
    assert drip.accepted == 0  # nothing was sent: the resolution used the whole attempt


@pytest.mark.processes
def test_notifications_never_take_a_pipeline_worker(app, app_env, factory, client):
    """A dripping receiver's test deliveries hold notify workers only: another account's run on
    the pipeline worker processes its first item while the attempts are in flight."""
    app.config["WEBHOOK_ALLOW_PRIVATE"] = True
    drip = Drip(every=1.0)
    a, a_user = factory.account(name="Noisy", credits=10_000, email="noisy@example.com")
    a_site = factory.site(a, name="Hooked", keywords=2)
    b, _ = factory.account(name="Quiet", credits=100_000, email="quiet@example.com")
    b_site = factory.site(b, name="Runs", keywords=6)
    factory.fast_config(b_site)
    token = factory.token(a_user)
    auth = {"Authorization": f"Bearer {token}"}
    hook = client.post(f"/api/v1/sites/{a_site.id}/webhooks/", json={"url": drip.url, "events": ["run.completed"]},
                       headers=auth).get_json()["data"]["webhook"]
    env = {"WEBHOOK_ALLOW_PRIVATE": "1", "WEBHOOK_TIMEOUT": "20"}
    pipeline = start_worker(app_env, extra_env=env)
    notifier = start_worker(app_env, "--notify", extra_env=env)
    try:
        for _ in range(3):
            resp = client.post(f"/api/v1/sites/{a_site.id}/webhooks/{hook['id']}/test/", headers=auth)
            assert resp.status_code in (200, 201, 202), resp.get_data(as_text=True)
        wait_for(lambda: drip.accepted >= 1, timeout=30, message="the receiver holds an attempt")
        run_id = AutomationService(b.id).start(b_site.id).id
        wait_for(lambda: (fresh_run(run_id).stage_1_result or {}).get("items_processed"), timeout=15,
                 message="another account's first item while the receiver drips")
        # One attempt to that webhook at a time: the other test deliveries wait for it.
        assert drip.accepted == 1
    finally:
        drip.close()
        stop_process(pipeline)
        stop_process(notifier)


def test_pages_say_why_a_run_waits(app, factory, client, auth):
    acc, _ = factory.account(credits=1_000_000)
    sites = [factory.site(acc, name=f"Site {i}", keywords=3) for i in range(2)]
    db.session.get(Account, acc.id).max_active_runs = 1
    db.session.commit()
    site_ids = [s.id for s in sites]
    svc = AutomationService(acc.id, actor="t")
    first, second = svc.start(site_ids[0]).id, svc.start(site_ids[1]).id
    auth.login()
    for page in ("/", f"/sites/{site_ids[1]}/automation", f"/runs/{second}"):
        html = client.get(page).get_data(as_text=True)
        assert "account limit: 1 of 1 runs active" in html, page
        assert "badge-queued" in html, page
    ops = client.get("/ops").get_data(as_text=True)
    assert 'id="fair-queue"' in ops
    # Cancel is offered on a queued run; pause is not.
    run_page = client.get(f"/runs/{second}").get_data(as_text=True)
    assert f'id="cancel-{second}"' in run_page and f'id="pause-{second}"' not in run_page
    svc.cancel(first)
    assert fresh_run(second).status == "running"
    from flask import g
    g.pop("_login_user", None)  # fresh_run ended the session the test client's user was loaded in
    html = client.get(f"/sites/{site_ids[1]}/automation").get_data(as_text=True)
    # Now it waits for a worker (none runs in this test): the cancelled run's leftover job
    # (its own account's, and of a run that ended) is nobody ahead of it.
    assert "</strong> waiting for a worker: 0 runs of other accounts ahead." in html
    assert "</strong> account limit" not in html


def test_waiting_for_a_worker_counts_other_accounts_active_runs_only(app, factory):
    """Kills: the reason counting the run's own account's jobs, a cancelled run's leftover job
    (in RQ's list or its ready list) and jobs rather than runs; and a cancel leaving its run's
    job in the account's ready list. No worker runs: every job waits."""
    from webapp.automation import jobs
    accounts = {}
    for name, n_sites in (("X", 1), ("Y", 2), ("Z", 2)):
        acc, _ = factory.account(name=name, credits=1_000_000)
        accounts[name] = (acc.id, [factory.site(acc, name=f"{name}{i}", keywords=3).id for i in range(n_sites)])
    runs = {}
    for name in ("X", "Y", "Z"):  # X's job goes to RQ's list (one deep), the others to ready lists
        acc_id, sites = accounts[name]
        svc = AutomationService(acc_id, actor="t")
        runs[name] = [svc.start(site_id).id for site_id in sites]

    def reason(run_id):
        return limits.queue_info(fresh_run(run_id))[1]

    # Z's second run: X's run (RQ's list) and Y's two runs take a worker first; Z's first is
    # its own account's and does not count.
    assert reason(runs["Z"][1]) == "waiting for a worker: 3 runs of other accounts ahead"
    assert reason(runs["Z"][0]) == "waiting for a worker: 2 runs of other accounts ahead"
    r = get_redis()
    y0_job = jobs.latest_job_id(r, runs["Y"][0])
    AutomationService(accounts["Y"][0], actor="t").cancel(runs["Y"][0])
    assert y0_job.encode() not in r.lrange(dispatch.ready_key(accounts["Y"][0]), 0, -1)
    assert not Job.exists(y0_job, connection=r)
    AutomationService(accounts["X"][0], actor="t").cancel(runs["X"][0])  # its job stays in RQ's list
    assert reason(runs["Z"][1]) == "waiting for a worker: 1 run of other accounts ahead"
    # Y's last run: only Z's first (Z's turn ties with Y's); X's leftover job does not count.
    assert reason(runs["Y"][1]) == "waiting for a worker: 1 run of other accounts ahead"


@pytest.mark.processes
def test_a_queued_run_started_later_survives_a_sigkill_with_exact_credits(app, app_env, factory):
    import os
    import signal
    from datetime import timedelta
    from webapp.automation.locks import exec_lock_key
    from webapp.models.base import utcnow
    acc, _ = factory.account(credits=1_000_000)
    first = factory.site(acc, name="First", keywords=2)
    second = factory.site(acc, name="Second", keywords=24)
    for s in (first, second):
        factory.fast_config(s, stage_4_batch_size=2)
    db.session.get(Account, acc.id).max_active_runs = 1
    db.session.commit()
    svc = AutomationService(acc.id, actor="t")
    r1, r2 = svc.start(first.id).id, svc.start(second.id).id
    assert fresh_run(r2).status == "queued"
    env = {"STALE_RUN_SECONDS": "2", "AI_LOCAL_LATENCY_MS": "100"}
    w1 = start_worker(app_env, extra_env=env)
    try:
        # r1 completes, r2 leaves the queue; kill while r2 is mid-item in stage 4.
        wait_for(lambda: fresh_run(r2).current_stage == 4 and (fresh_run(r2).stage_4_result or {})
                 .get("items_processed", 0) >= 1 and get_redis().exists(exec_lock_key(r2)), timeout=120,
                 interval=0.02, message="the once-queued run in stage 4")
        os.killpg(w1.pid, signal.SIGKILL)
        w1.wait(5)
        assert fresh_run(r1).status == "completed"
        wait_for(lambda: not get_redis().exists(exec_lock_key(r2)), timeout=30, message="exec lock expired")
        wait_for(lambda: fresh_run(r2).heartbeat_at < utcnow() - timedelta(seconds=2.5), timeout=30,
                 message="heartbeat stale")
        w2 = start_worker(app_env, extra_env=env)  # its start-up stale check recovers the run
        try:
            wait_for(lambda: fresh_run(r2).status == "completed", timeout=120, message="completed after the kill")
        finally:
            stop_process(w2)
    finally:
        stop_process(w1)
    run = fresh_run(r2)
    ledger = db.session.execute(select(func.sum(CreditTransaction.amount)).where(
        CreditTransaction.run_id == r2)).scalar()
    calls = db.session.execute(select(func.sum(AITaskLog.credits)).where(AITaskLog.run_id == r2)).scalar()
    assert -ledger == calls == run.total_credits_used > 0


def test_a_slice_ends_early_only_for_an_account_whose_turn_comes_first(app):
    r = get_redis()
    q = app.config["RQ_QUEUE"]
    for run in range(1, 4):  # account 1 has used the workers; account 2 not yet
        _push(app, 1, run)
        dispatch.charge(r, 1, 5.0)
    assert not dispatch.contended(r, q, 1) and not dispatch.contended(r, q, 2)  # alone: nobody to yield to
    _push(app, 2, 100)
    _push(app, 2, 101)
    # Account 2 (less worker time) waits: account 1's slice ends; account 2's does not for 1.
    assert dispatch.contended(r, q, 1)
    assert not dispatch.contended(r, q, 2)


@pytest.mark.processes
def test_a_delay_between_batches_holds_no_worker(app, app_env, factory):
    """Kills: a job sleeping through its site's delay between batches (or stages) inside the
    worker. One worker; account A's run pauses 30 s after every batch (a site's setting); B's
    whole run is done while A's next job still waits out that delay in fair dispatch, and a
    pause of A during its delay is a pause like any other; its resume goes on at once."""
    a, (a_site,), b, b_site = _two_accounts(factory, sites_a=1)
    from webapp.models import Site
    factory.fast_config(db.session.get(Site, a_site), stage_1_batch_size=2, within_stage_delay=30)
    a_svc = AutomationService(a)
    a_run = a_svc.start(a_site).id
    w = start_worker(app_env, extra_env={"AI_LOCAL_LATENCY_MS": "5"})
    r = get_redis()
    try:
        wait_for(lambda: (fresh_run(a_run).stage_1_result or {}).get("items_processed", 0) >= 2
                 and dispatch.next_due_in(r) is not None, timeout=60, message="A's first batch done, its next job delayed")
        done_before = fresh_run(a_run).stage_1_result["items_processed"]
        b_run = AutomationService(b).start(b_site).id
        wait_for(lambda: fresh_run(b_run).status == "completed", timeout=60, message="B's run completed")
        # B ran on the one worker while A's next job was still not due: A did not move.
        assert dispatch.next_due_in(r) is not None
        assert fresh_run(a_run).stage_1_result["items_processed"] == done_before
        a_svc.pause(a_run)
        assert fresh_run(a_run).status == "paused"
        a_svc.resume(a_run)
        wait_for(lambda: fresh_run(a_run).stage_1_result["items_processed"] > done_before, timeout=20,
                 message="the resumed run went on without waiting out the delay")
        # A cancel during a delay takes the run's delayed job out of fair dispatch.
        from webapp.automation import jobs
        wait_for(lambda: jobs.latest_job_id(r, a_run) in dispatch.waiting_jobs(r, app.config["RQ_QUEUE"]),
                 timeout=30, message="the resumed run's next job delayed")
        delayed = jobs.latest_job_id(r, a_run)
        a_svc.cancel(a_run)
        assert delayed not in dispatch.waiting_jobs(r, app.config["RQ_QUEUE"])
    finally:
        stop_process(w)


@pytest.mark.processes
def test_limit_2_on_real_workers_starts_queued_runs_in_order_never_more_than_2(app, app_env, factory):
    """Real workers: with max_active_runs 2, five starts give two running and three queued;
    the queued ones start by themselves in order as slots free, never more than two active
    at once; the first of them, cancelled once it has started, is charged exactly its AI
    calls, and the next queued run takes its slot."""
    acc, _ = factory.account(credits=1_000_000)
    sites = [factory.site(acc, name=f"S{i}", keywords=12 if i == 2 else 6) for i in range(5)]
    for s in sites:
        factory.fast_config(s, stage_4_batch_size=1)
    db.session.get(Account, acc.id).max_active_runs = 2
    db.session.commit()
    svc = AutomationService(acc.id, actor="t")
    runs = [svc.start(s.id).id for s in sites]
    assert [fresh_run(r).status for r in runs] == ["running", "running", "queued", "queued", "queued"]
    assert [limits.queue_info(fresh_run(r))[0] for r in runs[2:]] == [1, 2, 3]
    workers = [start_worker(app_env, extra_env={"AI_LOCAL_LATENCY_MS": "40"}) for _ in range(2)]
    try:
        wait_for(lambda: fresh_run(runs[2]).status == "running"
                 and (fresh_run(runs[2]).stage_1_result or {}).get("items_processed"), timeout=120,
                 interval=0.05, message="the first queued run started and processed items")
        svc.cancel(runs[2])
        wait_for(lambda: all(fresh_run(r).status == "completed" for r in runs[:2] + runs[3:]), timeout=240,
                 message="every other run completed")
    finally:
        for w in workers:
            stop_process(w)
    rows = [fresh_run(r) for r in runs]
    assert rows[2].status == "cancelled"
    assert rows[2].started_at <= rows[3].started_at <= rows[4].started_at
    for r in rows:  # at each start, at most one other run was active
        others = [o for o in rows if o.id != r.id and o.started_at <= r.started_at < o.ended_at]
        assert len(others) <= 1, [(o.id, o.started_at, o.ended_at) for o in rows]
    ai = db.session.execute(select(func.coalesce(func.sum(AITaskLog.credits), 0)).where(
        AITaskLog.run_id == runs[2])).scalar()
    ledger = db.session.execute(select(func.coalesce(func.sum(CreditTransaction.amount), 0)).where(
        CreditTransaction.run_id == runs[2])).scalar()
    assert ai == -ledger == rows[2].total_credits_used > 0
