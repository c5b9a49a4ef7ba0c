"""The storage room (webapp/storage/) on both backends: the local folders (the default, as
`make run` uses them) and an S3 API (moto's server mode on 127.0.0.1, a real HTTP endpoint).
The same tests run on each: objects, run logs (tail, paging, download, live follower, two
writers, Redis losing the live copy), images served after the tenancy check, retention
(prune → 410, records kept) and a site's deletion removing its files."""
import json
import re
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy
import websocket
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from webapp import metrics
from webapp.automation.logger import AutomationLogger, run_log
from webapp.automation.retention import prune
from webapp.automation.service import AutomationService
from webapp.extensions import db
from webapp.models import AITaskLog, AutomationRun, Image, Site
from webapp.models.base import utcnow
from webapp.redis_conn import get_redis
from webapp.storage import get_store
from webapp.storage.keys import image_key, site_prefixes

from conftest import drain


# The s3 cases start moto's server (a process of its own): `make test-quick` leaves them out.
@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.processes)])
def backend(request):
    return request.param


@pytest.fixture
def app_env(app_env, backend, request):
    """The conftest install, with its store on this test's backend."""
    if backend == "s3":
        return {**app_env, **request.getfixturevalue("s3_env")}
    return app_env


@pytest.fixture
def tenant(app, factory):
    acc, user = factory.account(credits=100_000)
    site = factory.site(acc, keywords=4)
    factory.fast_config(site)
    _other, other_user = factory.account(name="Other", credits=100_000)
    return {"acc": acc.id, "site": site.id, "token": factory.token(user), "other_token": factory.token(other_user)}


def _run(acc_id, site_id, empty_log=True):
    """A started run; its log emptied (the start wrote a line) so that tests number from 1."""
    run = AutomationService(acc_id).start(site_id)
    run = db.session.get(AutomationRun, run.id)
    if empty_log:
        run_log(run).delete()
    return run


def _bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_objects_put_get_list_delete(app, backend):
    store = get_store()
    assert store.kind == backend
    store.put("logs/1/2/3/a.log", b"hello\n")
    store.put("logs/1/2/3/seg/b.log", b"x" * 70_000)
    store.put("logs/1/2/4/c.log", b"other run")
    assert store.get("logs/1/2/3/a.log") == b"hello\n" and store.get("logs/1/2/3/none.log") is None
    assert store.list("logs/1/2/3/") == ["logs/1/2/3/a.log", "logs/1/2/3/seg/b.log"]
    assert store.list("logs/1/2/3/", start_after="logs/1/2/3/a.log") == ["logs/1/2/3/seg/b.log"]
    assert store.delete_prefix("logs/1/2/3/", dry_run=True) == (2, 70_006)
    assert store.get("logs/1/2/3/a.log") == b"hello\n"
    assert store.delete_prefix("logs/1/2/3/") == (2, 70_006)
    assert store.list("logs/1/2/3/") == [] and store.get("logs/1/2/4/c.log") == b"other run"
    store.delete(["logs/1/2/4/c.log", "logs/1/2/4/missing.log"])
    assert store.get("logs/1/2/4/c.log") is None
    for bad in ("../x", "/etc/passwd", "logs//x", "logs/../../x", "logs/a b"):
        with pytest.raises(ValueError):
            store.get(bad)


def test_run_log_tail_paging_download_in_order(app, client, tenant, backend):
    run = _run(tenant["acc"], tenant["site"])
    logger = AutomationLogger(app.config["LOG_DIR"], run, get_redis())
    numbers = [logger.log(f"line {i} ✓", stage=4)[0] for i in range(1, 5001)]
    logger.close()
    assert numbers == list(range(1, 5001))
    rl = run_log(run)
    assert rl.count() == 5000
    if backend == "s3":  # the lines went to segments in the bucket; Redis keeps only the recent end
        segs = get_store().list(f"logs/{run.account_id}/{run.site_id}/{run.id}/seg/")
        assert len(segs) >= 2
        assert get_redis().xlen(f"automation:run:{run.id}:log:stream") < 5000
        assert not Path(app.config["LOG_DIR"]).exists()  # nothing on this machine's disk
    tail = rl.tail(20)
    assert [ln.split()[-2] for ln in tail] == [str(i) for i in range(4981, 5001)]
    first, page = rl.read_before(101, 50)
    assert first == 51 and [ln.split()[-2] for ln in page] == [str(i) for i in range(51, 101)]
    first, page = rl.read_before(3000, 2500)  # spans segments and (S3) the stream boundary
    assert first == 500 and [int(ln.split()[-2]) for ln in page] == list(range(500, 3000))
    first, page = rl.read_after(4990, 100)
    assert first == 4991 and [ln.split()[-2] for ln in page] == [str(i) for i in range(4991, 5001)]
    body = b"".join(rl.iter_bytes()).decode()
    assert [int(ln.split()[-2]) for ln in body.splitlines()] == list(range(1, 5001))

    h = _bearer(tenant["token"])
    res = client.get(f"/api/v1/automation/logs/?run_id={run.id}&lines=20", headers=h).get_json()["data"]
    assert res["total_lines"] == 5000 and res["first_line"] == 4981 and len(res["lines"]) == 20
    res = client.get(f"/api/v1/automation/logs/?run_id={run.id}&lines=10&before=11", headers=h).get_json()["data"]
    assert res["first_line"] == 1 and [ln.split()[-2] for ln in res["lines"]] == [str(i) for i in range(1, 11)]
    res = client.get(f"/api/v1/automation/logs/?run_id={run.id}&lines=10&after=4995", headers=h).get_json()["data"]
    assert res["first_line"] == 4996 and len(res["lines"]) == 5
    # Another account's run is not found, whatever the backend.
    assert client.get(f"/api/v1/automation/logs/?run_id={run.id}&lines=5",
                      headers=_bearer(tenant["other_token"])).status_code == 404


def test_download_keeps_lines_flushed_while_it_reads(app, tenant, backend):
    """A download lists the segments, then reads the rest from the stream: a writer flushing a
    segment (and trimming the stream) in between must not make it skip those lines."""
    run = _run(tenant["acc"], tenant["site"])
    logger = AutomationLogger(app.config["LOG_DIR"], run, get_redis())
    for i in range(1, 2501):
        logger.log(f"line {i}")
    chunks = run_log(run).iter_bytes()
    body = [next(chunks)]  # started: the segments listed (S3), the first one read
    for i in range(2501, 5001):  # a segment flushed meanwhile: 2001-4000 leave the stream (S3)
        logger.log(f"line {i}")
    logger.close()
    body += list(chunks)
    numbers = [int(ln.split()[-1]) for ln in b"".join(body).decode().splitlines()]
    assert numbers == list(range(1, 5001)), f"{5000 - len(numbers)} lines missing"


def test_download_while_active_and_after_end(app, client, auth, tenant):
    run = _run(tenant["acc"], tenant["site"])
    logger = AutomationLogger(app.config["LOG_DIR"], run, get_redis())
    for i in range(1, 301):
        logger.log(f"item {i}")
    auth.login()
    got = client.get(f"/runs/{run.id}/log.txt")
    assert got.status_code == 200 and "attachment" in got.headers["Content-Disposition"]
    assert [int(ln.split()[-1]) for ln in got.get_data(as_text=True).splitlines()] == list(range(1, 301))
    AutomationService(tenant["acc"]).cancel(run.id)  # the run ends: everything to the store
    logger.log("late line after the end")
    logger.close()
    text = client.get(f"/runs/{run.id}/log.txt").get_data(as_text=True).splitlines()
    assert len(text) == 302 and "cancel" in text[300].lower() and text[-1].endswith("late line after the end")
    page = client.get(f"/runs/{run.id}").get_data(as_text=True)
    assert "late line after the end" in page


class Killed(BaseException):
    """A SIGKILL at that instant, in this process: nothing after it runs (no except, no cleanup)."""


def test_an_item_done_has_its_line_when_the_worker_dies_after_the_commit(app, factory, tenant, monkeypatch):
    """The item's line is written before its commit: a worker killed right after a stage-4
    item's commit (here: at the metric that follows it) leaves no item the database shows as
    done without its line (test_storage_machines kills a real worker, at a random instant)."""
    factory.fast_config(db.session.get(Site, tenant["site"]), stage_4_batch_size=1)
    run = _run(tenant["acc"], tenant["site"], empty_log=False)
    counted = metrics.items_processed

    def killed(n, *args):
        if n == 4:
            raise Killed()
        counted(n, *args)
    monkeypatch.setattr(metrics, "items_processed", killed)
    try:
        drain(app)
    except Killed:
        pass
    db.session.remove()
    done = db.session.execute(select(AITaskLog.item_type, AITaskLog.item_id)
                              .where(AITaskLog.run_id == run.id, AITaskLog.stage == 4)).all()
    lines = run_log(run).tail(10_000)
    missing = [d for d in done if not any(f"{d.item_type} {d.item_id} " in ln and ": ok" in ln for ln in lines)]
    assert done and missing == [], (missing, lines)


def test_an_item_whose_commit_fails_says_so_after_its_line(app, factory, tenant):
    """The line written before a commit that then fails is followed by one saying the item was
    not saved; the item is redone (a second ok line) and done once."""
    factory.fast_config(db.session.get(Site, tenant["site"]), stage_4_batch_size=1)
    run = _run(tenant["acc"], tenant["site"], empty_log=False)
    failed = []

    def fail_first_stage_4_commit(_session):
        last = run_log(run).tail(1)
        if not failed and last and "[stage 4]" in last[0] and ": ok" in last[0]:
            failed.append(last[0])
            raise IntegrityError("COMMIT", {}, Exception("a commit refused once"))
    sqlalchemy.event.listen(db.session, "before_commit", fail_first_stage_4_commit)
    try:
        drain(app)
    finally:
        sqlalchemy.event.remove(db.session, "before_commit", fail_first_stage_4_commit)
    assert db.session.get(AutomationRun, run.id).status == "completed" and failed
    lines = run_log(run).tail(10_000)
    what = failed[0].split("] ", 1)[1].split(": ok")[0]
    mine = [ln.split("] ", 1)[1] for ln in lines if f"] {what}: " in ln]
    assert mine[0].endswith(failed[0].split(": ok")[1]) and "not saved (IntegrityError)" in mine[1]
    assert ": ok" in mine[-1] and len(mine) >= 3, mine
    item_type, item_id = what.split()[:2]
    assert db.session.execute(select(sqlalchemy.func.count()).where(
        AITaskLog.run_id == run.id, AITaskLog.item_type == item_type, AITaskLog.item_id == int(item_id))).scalar() == 1


def test_two_writers_share_one_numbering(app, tenant):
    """A worker and a web process (pausing) write to one run at once: one order, no gaps."""
    run = _run(tenant["acc"], tenant["site"])
    seen = []

    def write(tag):
        with app.app_context():
            lg = AutomationLogger(app.config["LOG_DIR"], run, get_redis())
            for i in range(400):
                seen.append(lg.log(f"{tag} {i}")[0])
            lg.close()
    threads = [threading.Thread(target=write, args=(t,)) for t in ("worker", "web")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == list(range(1, 801))
    lines = run_log(run).tail(1000)
    assert len(lines) == 800
    for tag in ("worker", "web"):  # each writer's lines in its own order
        mine = [int(ln.split()[-1]) for ln in lines if f" {tag} " in ln]
        assert mine == list(range(400))


def test_segmented_log_survives_redis_losing_its_copy(app, tenant, backend):
    if backend != "s3":
        pytest.skip("the file layout keeps no live copy in Redis")
    run = _run(tenant["acc"], tenant["site"])
    lg = AutomationLogger(app.config["LOG_DIR"], run, get_redis())
    for i in range(1, 2501):
        lg.log(f"n {i}")
    run_log(run).finish()  # what the end of a run does
    r = get_redis()
    r.delete(*[f"automation:run:{run.id}:log:{k}" for k in ("n", "stream", "flushed")])
    rl = run_log(run)
    assert rl.count() == 2500 and rl.tail(3)[-1].endswith("n 2500")
    assert [int(x.split()[-1]) for x in rl.read_before(1201, 200)[1]] == list(range(1001, 1201))
    # A writer coming back (a run continued after a Redis restart) goes on after the store's last line.
    assert lg.log("continued")[0] == 2501


def test_websocket_tail_follows_lines(app, live_server, tenant):
    run = _run(tenant["acc"], tenant["site"])
    lg = AutomationLogger(app.config["LOG_DIR"], run, get_redis())
    for i in range(1, 151):
        lg.log(f"before {i}")
    ws = websocket.create_connection(f"ws://{live_server.removeprefix('http://')}/ws/runs/{run.id}/logs",
                                     header=[f"Authorization: Bearer {tenant['token']}"])
    ws.settimeout(10)
    try:
        first = [ws.recv() for _ in range(100)]  # the last 100 lines at connection
        assert first[0].endswith("before 51") and first[-1].endswith("before 150")
        for i in range(1, 6):
            lg.log(f"live {i}")
        assert [ws.recv().split()[-1] for _ in range(5)] == ["1", "2", "3", "4", "5"]
    finally:
        ws.close()


def _complete_run_with_images(app, tenant):
    run = _run(tenant["acc"], tenant["site"], empty_log=False)
    drain(app)
    run = db.session.get(AutomationRun, run.id)
    assert run.status == "completed"
    from types import SimpleNamespace
    images = [SimpleNamespace(id=i.id, account_id=i.account_id, site_id=i.site_id) for i in db.session.execute(
        db.select(Image).where(Image.site_id == tenant["site"], Image.status == "generated")).scalars()]
    assert images
    return run, images


def test_images_from_the_store_after_tenancy_check(app, client, tenant, backend):
    run, images = _complete_run_with_images(app, tenant)
    store = get_store()
    for img in images:
        assert store.get(image_key(img.account_id, img.site_id, img.id))[:8] == b"\x89PNG\r\n\x1a\n"
    if backend == "s3":
        assert not Path(app.config["MEDIA_DIR"]).exists()
    got = client.get(f"/media/images/{images[0].id}.png", headers=_bearer(tenant["token"]))
    assert got.status_code == 200 and got.mimetype == "image/png" and got.data[:4] == b"\x89PNG"
    assert client.get(f"/media/images/{images[0].id}.png",
                      headers=_bearer(tenant["other_token"])).status_code == 404
    assert client.get("/media/images/999999.png", headers=_bearer(tenant["token"])).status_code == 404
    # The row's file_path is never used as a path: a hostile value changes nothing.
    db.session.execute(db.update(Image).where(Image.id == images[1].id).values(file_path="../../../etc/passwd"))
    db.session.commit()
    got = client.get(f"/media/images/{images[1].id}.png", headers=_bearer(tenant["token"]))
    assert got.status_code == 200 and got.data[:4] == b"\x89PNG"


def test_prune_deletes_files_keeps_records_and_answers_410(app, client, auth, runner, tenant):
    run, images = _complete_run_with_images(app, tenant)
    results = {n: run.stage_result(n) for n in range(1, 8)}
    recent = AutomationRun(account_id=tenant["acc"], site_id=tenant["site"], status="completed",
                           ended_at=utcnow())  # a second run, ended now: kept
    db.session.add(recent)
    db.session.commit()
    AutomationLogger(app.config["LOG_DIR"], recent, get_redis()).log("recent run")
    db.session.execute(db.update(AutomationRun).where(AutomationRun.id == run.id)
                       .values(ended_at=utcnow() - timedelta(days=40)))
    db.session.commit()
    h = _bearer(tenant["token"])
    before = client.get(f"/api/v1/automation/logs/?run_id={run.id}&lines=5", headers=h).get_json()["data"]
    assert len(before["lines"]) == 5

    out = runner.invoke(args=["prune", "--older-than", "30", "--dry-run"])
    assert out.exit_code == 0 and "would delete" in out.output and "Runs ended more than 30 days ago: 1" in out.output
    assert client.get(f"/api/v1/automation/logs/?run_id={run.id}&lines=5", headers=h).status_code == 200
    for bad in (["prune", "--older-than", "soon"], ["prune", "--older-than", "0"], ["prune"]):
        res = runner.invoke(args=bad)
        assert res.exit_code != 0
    res = runner.invoke(args=["prune", "--older-than", "soon"])
    assert res.exit_code == 1 and res.output.strip().count("\n") == 0 and res.output.startswith("Error:")

    out = runner.invoke(args=["prune", "--older-than", "30"])
    assert out.exit_code == 0 and "deleted" in out.output, out.output
    gone = client.get(f"/api/v1/automation/logs/?run_id={run.id}&lines=5", headers=h)
    assert gone.status_code == 410 and gone.get_json()["success"] is False
    assert "deleted by the retention policy" in gone.get_json()["error"]
    db.session.expire_all()
    kept = db.session.get(AutomationRun, run.id)
    assert kept.status == "completed" and kept.files_pruned_at is not None
    assert {n: kept.stage_result(n) for n in range(1, 8)} == results
    store = get_store()
    assert store.list(f"logs/{run.account_id}/{run.site_id}/{run.id}/") == []
    assert all(store.get(image_key(i.account_id, i.site_id, i.id)) is None for i in images)
    assert client.get(f"/media/images/{images[0].id}.png", headers=h).status_code == 404
    # The recent run keeps its log.
    assert client.get(f"/api/v1/automation/logs/?run_id={recent.id}&lines=5", headers=h).status_code == 200
    auth.login()
    page = client.get(f"/runs/{run.id}").get_data(as_text=True)
    assert 'id="log-pruned"' in page and "deleted by the retention policy" in page
    assert client.get(f"/runs/{run.id}/log.txt").status_code == 410
    # Pruning again finds nothing more.
    assert "Runs ended more than 30 days ago: 0" in runner.invoke(args=["prune", "--older-than", "30"]).output


def test_websocket_on_a_pruned_log_closes_with_4410(app, live_server, tenant):
    """A socket opened on a run whose log retention deleted is told so (4410, as the API's 410),
    not left waiting on a log that will never have a line."""
    run = _run(tenant["acc"], tenant["site"], empty_log=False)
    AutomationService(tenant["acc"]).cancel(run.id)
    db.session.execute(db.update(AutomationRun).where(AutomationRun.id == run.id)
                       .values(ended_at=utcnow() - timedelta(days=40)))
    db.session.commit()
    url = f"ws://{live_server.removeprefix('http://')}/ws/runs/{run.id}/logs"
    header = [f"Authorization: Bearer {tenant['token']}"]
    ws = websocket.create_connection(url, header=header, timeout=10)
    try:
        assert "Run started" in ws.recv()  # before the prune: the log
    finally:
        ws.close()
    assert prune(30)["runs"] == 1
    ws = websocket.create_connection(url, header=header, timeout=10)
    try:
        opcode, data = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert int.from_bytes(data[:2], "big") == 4410 and b"retention" in data[2:]
    finally:
        ws.close()


def test_retention_days_periodic_job(app, tenant):
    from webapp.automation.retention_job import prune_task
    from webapp.scheduling import periodic_jobs
    assert any(p["id"] == "periodic-prune_run_files" and p["func"] == "webapp.automation.retention_job.prune_task"
               for p in periodic_jobs())
    run_id = _run(tenant["acc"], tenant["site"]).id
    AutomationService(tenant["acc"]).cancel(run_id)
    db.session.execute(db.update(AutomationRun).where(AutomationRun.id == run_id)
                       .values(ended_at=utcnow() - timedelta(days=8)))
    db.session.commit()
    app.config["RETENTION_DAYS"] = None
    assert prune_task() is None  # unset: keep everything
    app.config["RETENTION_DAYS"] = 7
    assert prune_task()["runs"] == 1
    db.session.expire_all()
    assert db.session.get(AutomationRun, run_id).files_pruned_at is not None


def test_site_delete_removes_its_objects(app, tenant):
    from webapp.models import User
    from webapp.team import delete_site
    run, images = _complete_run_with_images(app, tenant)
    store = get_store()
    store.put(f"logs/{tenant['acc']}/{tenant['site'] + 1000}/1/keep.log", b"another site's")
    assert all(store.list(p) for p in site_prefixes(tenant["acc"], tenant["site"]))
    owner = db.session.execute(db.select(User).where(User.account_id == tenant["acc"])).scalar_one()
    from webapp.models import Site
    delete_site(owner, tenant["site"], db.session.get(Site, tenant["site"]).name)
    assert all(store.list(p) == [] for p in site_prefixes(tenant["acc"], tenant["site"]))
    assert store.get(f"logs/{tenant['acc']}/{tenant['site'] + 1000}/1/keep.log") == b"another site's"


def test_bucket_unreachable_is_503_not_500(app, client, auth, tenant, backend):
    if backend != "s3":
        pytest.skip("a local folder has no outage of its own")
    _run0, images = _complete_run_with_images(app, tenant)
    run = AutomationRun(account_id=tenant["acc"], site_id=tenant["site"], status="completed", ended_at=utcnow())
    db.session.add(run)
    db.session.commit()
    lg = AutomationLogger(app.config["LOG_DIR"], run, get_redis())
    for i in range(3500):  # more than the stream keeps: the first lines are in segments only
        lg.log(f"l {i}")
    lg.close()
    run_log(run).finish()
    total = run_log(run).count()
    from webapp.storage.s3 import S3Store
    good = app.extensions["storage"]
    app.extensions["storage"] = S3Store(good.bucket, "automation", "http://127.0.0.1:9")  # nothing listens
    try:
        h = _bearer(tenant["token"])
        # The recent end is in Redis: the tail still answers; paging into the segments cannot.
        tail = client.get(f"/api/v1/automation/logs/?run_id={run.id}&lines=5", headers=h)
        assert tail.status_code == 200 and tail.get_json()["data"]["total_lines"] == total
        from webapp.storage import logs
        logs.SEGMENTS.forget(app.extensions["storage"], f"logs/{run.account_id}/")
        page = client.get(f"/api/v1/automation/logs/?run_id={run.id}&lines=5&before=3", headers=h)
        assert page.status_code == 503 and "cannot be read right now" in page.get_json()["error"]
        assert client.get(f"/media/images/{images[0].id}.png", headers=h).status_code == 503
        # The run page still opens (the run's state is in the database), saying why there is no log.
        auth.login()
        for query in ("?before=3", "?q=l+1"):
            logs.SEGMENTS.forget(app.extensions["storage"], f"logs/{run.account_id}/")
            page = client.get(f"/runs/{run.id}{query}")
            assert page.status_code == 200, query
            assert "run log unavailable: object storage unreachable" in page.get_data(as_text=True).lower()
    finally:
        app.extensions["storage"] = good
