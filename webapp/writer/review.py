"""The review queue: stage 7 moves finished articles to `review`; a person approves or
rejects them here (reject needs a note). Who and when are recorded on the content.

Every change is one conditional UPDATE scoped by account and status `review`: a bulk review
applies to all the ids or to none (another account's id, a missing one, or one that is no
longer in review refuses the whole request and changes nothing).
"""
from sqlalchemy import func, select, update

from .. import audit
from ..errors import AppError, NotFound
from ..extensions import db
from ..models import Content, Task
from ..models.base import utcnow

ACTIONS = {"approve": "approved", "reject": "rejected"}
CONTENT_STATUSES = ("draft", "review", "approved", "rejected")
MAX_NOTE = 2000
MAX_BULK = 500


def awaiting_review(site_id, account_id):
    """Articles stage 7 moved to review that nobody has approved or rejected yet."""
    return db.session.execute(select(func.count(Content.id)).where(
        Content.site_id == site_id, Content.account_id == account_id, Content.status == "review")).scalar()


class ReviewError(AppError):
    def __init__(self, errors, status=400):
        self.errors = errors
        super().__init__("; ".join(f"'{k}' {v}" for k, v in errors.items()), status)


def clean_note(note, action):
    if note is not None and not isinstance(note, str):
        raise ReviewError({"note": "must be a string"})
    note = (note or "").strip()
    if len(note) > MAX_NOTE:
        raise ReviewError({"note": f"must be at most {MAX_NOTE} characters"})
    if action == "reject" and not note:
        raise ReviewError({"note": "is required to reject (say what to change)"})
    return note or None


def clean_ids(ids):
    if not isinstance(ids, list) or not ids:
        raise ReviewError({"ids": "must be a non-empty list of content ids"})
    if len(ids) > MAX_BULK:
        raise ReviewError({"ids": f"at most {MAX_BULK} ids per request"})
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 < i < 2**31 for i in ids):
        raise ReviewError({"ids": "must contain positive integer ids only"})
    return sorted(set(ids))


class ReviewService:
    def __init__(self, account_id, reviewer):
        self.account_id = int(account_id)
        self.reviewer = reviewer  # the user's email

    def queue(self, site_id, page=1, per_page=20):
        base = select(Content).where(Content.site_id == site_id, Content.account_id == self.account_id,
                                     Content.status == "review")
        total = db.session.execute(select(func.count()).select_from(base.with_only_columns(Content.id).subquery())).scalar()
        # Past the end: no query asking the database to skip `offset` rows for nothing.
        items = [] if (page - 1) * per_page >= total else db.session.execute(
            base.order_by(Content.id).offset((page - 1) * per_page).limit(per_page)).scalars().all()
        return items, total

    def decide(self, content_id, action, note=None, regenerate=False):
        return self.bulk([content_id], action, note, single=True, regenerate=regenerate)[0]

    def bulk(self, ids, action, note=None, site_id=None, single=False, regenerate=False):
        """`regenerate` (reject only): the articles go back to Tasks → Content; the next run
        rewrites each with the note given to the AI (charged as an article), and it comes
        back for review as its next `version`, the earlier one kept in `previous_versions`."""
        if not isinstance(action, str) or action not in ACTIONS:
            raise ReviewError({"action": "must be 'approve' or 'reject'"})
        if not isinstance(regenerate, bool):
            raise ReviewError({"regenerate": "must be true or false"})
        if regenerate and action != "reject":
            raise ReviewError({"regenerate": "only with reject"})
        note = clean_note(note, action)
        ids = clean_ids(ids)
        scope = [Content.id.in_(ids), Content.account_id == self.account_id]
        if site_id is not None:
            scope.append(Content.site_id == site_id)
        found = dict(db.session.execute(select(Content.id, Content.status).where(*scope)).all())
        missing = [i for i in ids if i not in found]
        if missing:
            db.session.rollback()
            if single:
                raise NotFound(f"Content {missing[0]} not found.")
            raise ReviewError({"ids": f"not found: {', '.join(map(str, missing[:20]))}"}, 404)
        res = db.session.execute(update(Content).where(*scope, Content.status == "review").values(
            status=ACTIONS[action], review_note=note, reviewed_by=self.reviewer, reviewed_at=utcnow()))
        if res.rowcount != len(ids):
            db.session.rollback()
            # Read again: the state that made the update miss (another reviewer was quicker).
            found = dict(db.session.execute(select(Content.id, Content.status).where(*scope)).all())
            done = [f"{i} ({s})" for i, s in found.items() if s != "review"]
            field = "content" if single else "ids"
            raise ReviewError({field: f"not in review: {', '.join(done[:20]) or 'changed meanwhile'}"})
        if regenerate:  # in the same transaction: rejected and queued for rewriting, or neither
            db.session.execute(update(Task).where(
                Task.id.in_(select(Content.task_id).where(*scope)), Task.account_id == self.account_id)
                .values(status="queued"), execution_options={"synchronize_session": False})
        sites = db.session.execute(select(Content.site_id).where(*scope).distinct()).scalars().all()
        for sid in sites:  # one audit entry per site touched, in the review's transaction
            site_ids = db.session.execute(select(Content.id).where(*scope, Content.site_id == sid)).scalars().all()
            audit.record(self.account_id, f"user:{self.reviewer}", f"content.{action}", site_id=sid,
                         content_ids=site_ids, note=note, **({"regenerate": True} if regenerate else {}))
        db.session.commit()
        from ..count_generation import changed
        for sid in sites:  # "awaiting review" and stage 7's pending count moved
            changed(sid)
        return db.session.execute(select(Content).where(Content.id.in_(ids)).order_by(Content.id)).scalars().all()
