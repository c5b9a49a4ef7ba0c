"""Retention: the logs and images of runs that ended more than N days ago are deleted from the
store (RETENTION_DAYS, applied by a periodic job; `flask prune --older-than DAYS` by hand).
The run records, their stage results, the credit ledger and the content rows stay: a pruned
run is marked (`files_pruned_at`), its logs answer 410 and its page says why."""
import logging
from datetime import timedelta

from sqlalchemy import select, update

from ..extensions import db
from ..models import ACTIVE_STATUSES, AITaskLog, AutomationRun, Image
from ..models.base import utcnow
from ..storage import StoreError, get_store
from ..storage.keys import image_key, site_prefixes
from .logger import check_log_kept, pruned_message, run_log  # noqa: F401  (the room's names)

log = logging.getLogger(__name__)
BATCH = 200


def prune(older_than_days, dry_run=False, now=None):
    """Delete the files of runs ended more than `older_than_days` ago (each run committed on its
    own: an interrupted prune resumes where it stopped). Returns a report."""
    now = now or utcnow()
    cutoff = now - timedelta(days=older_than_days)
    store = get_store()
    report = {"runs": 0, "objects": 0, "bytes": 0, "images": 0, "dry_run": dry_run}
    last_id = 0
    while True:
        runs = db.session.execute(select(AutomationRun).where(
            AutomationRun.id > last_id, AutomationRun.ended_at.is_not(None), AutomationRun.ended_at < cutoff,
            AutomationRun.files_pruned_at.is_(None), AutomationRun.status.not_in(ACTIVE_STATUSES))
            .order_by(AutomationRun.id).limit(BATCH)).scalars().all()
        if not runs:
            return report
        for run in runs:
            last_id = run.id
            objects, size = run_log(run).delete(dry_run=dry_run)
            image_ids = db.session.execute(select(Image.id).where(
                Image.account_id == run.account_id, Image.file_path.is_not(None),
                Image.id.in_(select(AITaskLog.item_id).where(AITaskLog.run_id == run.id,
                                                             AITaskLog.function == "generate_image")))).scalars().all()
            keys = [image_key(run.account_id, run.site_id, i) for i in image_ids]
            if not dry_run:
                store.delete(keys)
                if image_ids:
                    db.session.execute(update(Image).where(Image.id.in_(image_ids)).values(file_path=None))
                db.session.execute(update(AutomationRun).where(AutomationRun.id == run.id)
                                   .values(files_pruned_at=now))
                db.session.commit()
            report["runs"] += 1
            report["objects"] += objects + len(keys)
            report["bytes"] += size
            report["images"] += len(image_ids)
            db.session.expunge(run)  # a long prune does not pile every run up in the session


def delete_site_files(account_id, site_id):
    """A site was deleted: its runs' logs and its images go from the store too."""
    store = get_store()
    for prefix in site_prefixes(account_id, site_id):
        try:
            store.delete_prefix(prefix)
        except StoreError as e:  # the site is gone already; say what is left behind
            log.error("site %s deleted but its files under %s remain: %s", site_id, prefix, e)
