"""Keyword imports too big for a web request: a KeywordImport record and an RQ job.

A request with more than IMPORT_SYNC_MAX_ROWS rows stores its body in Redis (the workers may
be on other machines), records the import as `queued` and answers 202 with it; the job, on
the IMPORT_QUEUE, parses, validates, checks the site's keyword quota for the whole file (all
or nothing: over the quota nothing is inserted) and inserts in chunks of CHUNK rows, one
commit each with its progress (`done` of `total`), so the page's progress bar moves and the
database is never held by one long transaction. Statuses: queued → running → completed |
failed (with `error`). One import at a time per site (a second is refused with 409); an
import without progress for STALE_SECONDS no longer blocks the next.

A job that dies mid-way (worker killed) leaves the chunks it committed; running it again
(RQ retry) skips what exists, as duplicates.
"""
import json
import logging

from flask import current_app
from rq import Queue, Retry
from sqlalchemy import select

from . import planner
from .count_generation import changed
from .errors import AppError, BadRequest, Conflict, NotFound
from .extensions import db
from .logging_setup import job_meta
from .models import KeywordImport, Site
from .models.base import iso, utcnow
from .redis_conn import get_redis

log = logging.getLogger(__name__)

# Its own queue, which worker.py listens to after control and notifications and before the
# pipeline: imports are rare, bounded (MAX_ROWS) and someone is waiting for them.
IMPORT_QUEUE = "automation-import"
CHUNK = 1000
STALE_SECONDS = 600
PAYLOAD_TTL = 7 * 24 * 3600
MAX_ERRORS_KEPT = 100
ACTIVE = ("queued", "running")


def payload_key(import_id):
    return f"automation:import:{int(import_id)}:payload"


def to_dict(imp, full=True):
    d = {"id": imp.id, "status": imp.status, "total": imp.total, "done": imp.done}
    if full:
        d.update({"site_id": imp.site_id, "created": imp.created, "duplicates": imp.duplicates,
                  "invalid": imp.invalid, "errors": json.loads(imp.errors or "[]"), "error": imp.error,
                  "created_at": iso(imp.created_at), "finished_at": iso(imp.finished_at)})
    return d


def get(account_id, import_id):
    imp = db.session.execute(select(KeywordImport).where(
        KeywordImport.id == import_id, KeywordImport.account_id == account_id)).scalar_one_or_none()
    if imp is None:
        raise NotFound(f"Import {import_id} not found.")
    return imp


def active_for(site_id):
    """The site's import in progress, if any (a stale one is failed on the way)."""
    imp = db.session.execute(select(KeywordImport).where(
        KeywordImport.site_id == site_id, KeywordImport.status.in_(ACTIVE)).order_by(KeywordImport.id.desc())
    ).scalars().first()
    if imp is None:
        return None
    if (utcnow() - imp.updated_at).total_seconds() > STALE_SECONDS:
        imp.status, imp.error, imp.finished_at = "failed", "No progress for 10 minutes (worker lost?).", utcnow()
        db.session.commit()
        return None
    return imp


def latest_for(site_id):
    return db.session.execute(select(KeywordImport).where(KeywordImport.site_id == site_id)
                              .order_by(KeywordImport.id.desc())).scalars().first()


def refuse_if_busy(site):
    imp = active_for(site.id)
    if imp is not None:
        raise Conflict(f"Import {imp.id} is still {imp.status} for this site ({imp.done:,} of {imp.total:,} rows); "
                       f"wait for it to finish.")


def start(site, body, kind, rows, actor):
    """Queue a background import of `body` (bytes: CSV text, or a JSON list of rows when kind is
    "json"), `rows` its estimated row count; returns the KeywordImport."""
    from .quotas import check_keyword_room
    if rows > planner.MAX_ROWS:
        raise BadRequest(f"'keywords': at most {planner.MAX_ROWS} rows per import.",
                         errors={"keywords": f"at most {planner.MAX_ROWS} rows per import"})
    refuse_if_busy(site)
    check_keyword_room(site)
    imp = KeywordImport(account_id=site.account_id, site_id=site.id, status="queued", total=rows,
                        created_by=actor)
    db.session.add(imp)
    db.session.commit()
    r = get_redis()
    r.set(payload_key(imp.id), json.dumps({"kind": kind}).encode() + b"\n" + body, ex=PAYLOAD_TTL)
    try:
        enqueue(r, imp.id)
    except Exception:
        imp.status, imp.error, imp.finished_at = "failed", "Could not queue the import.", utcnow()
        db.session.commit()
        raise
    return imp


def enqueue(client, import_id):
    """The one place an import job is queued (the lead's dispatch may route IMPORT_QUEUE)."""
    return Queue(IMPORT_QUEUE, connection=client).enqueue(
        "webapp.import_job.run_import_job", int(import_id), job_id=f"automation-import-{int(import_id)}",
        job_timeout=3600, result_ttl=3600, failure_ttl=7 * 24 * 3600, retry=Retry(max=2, interval=5),
        description=f"keyword import {int(import_id)}", meta=job_meta())


def _rows_of(raw):
    head, _, body = raw.partition(b"\n")
    kind = json.loads(head).get("kind")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadRequest("The file must be UTF-8 CSV text.")
    if kind == "json":
        rows = json.loads(text)
        planner.check_size(rows)
        return rows
    rows = planner.parse_csv(text)
    planner.check_size(rows)
    return rows


def _fail(imp, message):
    db.session.rollback()
    imp = db.session.get(KeywordImport, imp.id)
    imp.status, imp.error, imp.finished_at, imp.updated_at = "failed", message, utcnow(), utcnow()
    db.session.commit()
    get_redis().delete(payload_key(imp.id))
    return imp


def run_import(import_id):
    from .quotas import QuotaExceeded, check_keywords
    imp = db.session.get(KeywordImport, import_id)
    if imp is None or imp.status not in ACTIVE:
        return None
    site = db.session.get(Site, imp.site_id)
    raw = get_redis().get(payload_key(imp.id))
    if site is None or raw is None:
        return _fail(imp, "The uploaded file is no longer available; import it again.")
    imp.status, imp.updated_at = "running", utcnow()
    db.session.commit()
    try:
        rows = _rows_of(raw)
        del raw
        clean, errors, duplicates = planner.classify(rows)
        imp.total = len(rows)
        del rows
        planner.lock_site(site)
        existing = planner.existing_keys(site, [c[0] for c in clean])
        new = [c for c in clean if c[0] not in existing]
        duplicates += len(clean) - len(new)
        check_keywords(site, len(new))
    except QuotaExceeded as e:
        return _fail(imp, e.message)
    except (AppError, ValueError) as e:
        return _fail(imp, getattr(e, "message", None) or f"Malformed file: {e}.")
    imp.duplicates, imp.invalid = duplicates, len(errors)
    imp.errors = json.dumps(errors[:MAX_ERRORS_KEPT])
    settled = imp.total - len(new)  # rows already decided: invalid or duplicate
    imp.done = settled
    imp.updated_at = utcnow()
    db.session.commit()
    created = 0
    from sqlalchemy.exc import IntegrityError
    for start in range(0, len(new), CHUNK):
        chunk = new[start:start + CHUNK]
        try:
            planner.add_keywords(site, chunk)
        except IntegrityError:  # a concurrent small import added some: skip those
            db.session.rollback()
            have = planner.existing_keys(site, [c[0] for c in chunk])
            chunk = [c for c in chunk if c[0] not in have]
            imp = db.session.get(KeywordImport, import_id)
            imp.duplicates += len(have)
            planner.add_keywords(site, chunk)
        created += len(chunk)
        imp.created, imp.done, imp.updated_at = created, settled + start + len(new[start:start + CHUNK]), utcnow()
        db.session.commit()
        changed(site.id)  # each committed chunk is visible at once: the cached pending counts are stale
    from .audit import record
    if created:
        record(site.account_id, imp.created_by, "keywords.import", site_id=site.id, created=created,
               duplicates=imp.duplicates, invalid=imp.invalid, import_id=imp.id)
    imp.status, imp.done, imp.finished_at, imp.updated_at = "completed", imp.total, utcnow(), utcnow()
    db.session.commit()
    if created:
        changed(site.id)  # once more at the end: a count cached between the last chunk and here
    get_redis().delete(payload_key(imp.id))
    log.info("keyword import %s: %s created, %s duplicates, %s invalid", imp.id, created, imp.duplicates, imp.invalid)
    return imp
