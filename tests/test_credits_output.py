"""Every credit buys output (#25): keywords that join a topic whose ideas exist are written
about; a run that charges credits without creating articles says why."""
from sqlalchemy import func, select

from webapp.automation.service import AutomationService
from webapp.extensions import db
from webapp.models import AITaskLog, Cluster, Content, ContentIdea, Keyword
from webapp.planner import import_rows

from conftest import fresh_run, start_worker, stop_process, wait_for

FIRST = ["trail running shoes", "trail running for beginners", "best trail running gear",
         "trail running hydration", "garden soil mix", "garden soil ph"]


def _count(model, site_id, *where):
    n = db.session.execute(select(func.count()).select_from(model).where(model.site_id == site_id, *where)).scalar()
    db.session.remove()
    return n


def _ended(run_id):
    run = fresh_run(run_id)
    return run if run.status in ("completed", "failed", "cancelled", "paused") else None


def test_keywords_joining_an_existing_topic_become_articles(app, app_env, factory):
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc)
    site_id = site.id
    factory.fast_config(site)
    import_rows(site, [{"keyword": k} for k in FIRST])
    svc = AutomationService(acc.id)
    w = start_worker(app_env)
    try:
        first = svc.start(site_id).id
        assert wait_for(lambda: _ended(first), timeout=120, message="first run").status == "completed"
        trail = db.session.execute(select(Cluster).where(Cluster.site_id == site_id,
                                                         Cluster.name.ilike("%trail%"))).scalar_one()
        trail_id, ideas_before = trail.id, _count(ContentIdea, site_id)
        articles_before = _count(Content, site_id)
        assert trail.ideas_generated

        site = db.session.get(type(site), site_id)
        import_rows(site, [{"keyword": f"trail running tip {i}"} for i in range(1, 41)])
        est = svc.estimate(site_id)
        # 40 keywords clustered (40) + ideas for them + 20 articles with prompts and images.
        assert est["estimated_credits"] > 40 + 20 * 5, est
        second = svc.start(site_id).id
        run = wait_for(lambda: _ended(second), timeout=240, message="second run")
        assert run.status == "completed", run.error_message
    finally:
        stop_process(w)
    joined = _count(Keyword, site_id, Keyword.cluster_id == trail_id)
    assert joined == 4 + 40, "the new keywords joined the existing topic"
    assert _count(Keyword, site_id, Keyword.ideas_generated.is_(False)) == 0
    assert run.stage_1_result["credits_used"] == 40
    assert run.stage_2_result["items_processed"] == 1 and run.stage_2_result["items_created"] == 20
    assert _count(ContentIdea, site_id) == ideas_before + 20
    assert _count(Content, site_id) == articles_before + 20
    assert run.stage_4_result["items_created"] == 20
    titles = db.session.execute(select(ContentIdea.title).where(ContentIdea.cluster_id == trail_id)).scalars().all()
    assert len(titles) == len(set(titles))
    # charged = AI log rows; every article is in review
    assert run.total_credits_used == db.session.execute(select(func.sum(AITaskLog.credits)).where(
        AITaskLog.run_id == second)).scalar()
    assert _count(Content, site_id, Content.status == "review") == articles_before + 20


def test_overview_and_estimate_count_a_cluster_pending_for_new_keywords(app, factory):
    from conftest import drain
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc)
    site_id, site_model = site.id, type(site)
    factory.fast_config(site)
    import_rows(site, [{"keyword": k} for k in FIRST])
    svc = AutomationService(acc.id)
    svc.start(site_id)
    drain(app)
    site = db.session.get(site_model, site_id)
    before = svc.estimate(site_id)["estimated_credits"]
    assert before == 0
    cluster = db.session.execute(select(Cluster).where(Cluster.site_id == site_id,
                                                       Cluster.name.ilike("%trail%"))).scalar_one()
    # A keyword already in the cluster but never written about (as before this fix).
    import_rows(site, [{"keyword": "trail running tip 1"}, {"keyword": "trail running tip 2"}])
    kws = db.session.execute(select(Keyword).where(Keyword.site_id == site_id, Keyword.cluster_id.is_(None))).scalars().all()
    for k in kws:
        k.cluster_id = cluster.id
    db.session.commit()
    cluster = db.session.get(Cluster, cluster.id)
    cluster.ideas_generated = False
    db.session.commit()
    overview = {row["number"]: row["pending"] for row in svc.pipeline_overview(site_id, fresh=True)}
    assert overview[2] == 1 and overview[1] == 0
    _, p = svc.pending_counts(site_id)
    assert p["ideas_from_clusters"] == 1  # ideas for the 2 uncovered keywords, not for all 6
    est = svc.estimate(site_id)["estimated_credits"]
    assert est == 2 + 5 + 1 + 3 * 2  # one cluster's ideas, one article, its prompts, 3 images
