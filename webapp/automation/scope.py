"""Which items a run may take from each stage.

A normal run takes everything pending (`ALL`). A retry run (trigger_type "retry") takes
exactly the failed items of the run it retries, and carries what they produce through the
remaining stages: a failed task's new draft gets its image prompts, images and review in the
same retry run, while every other pending item is left for the next normal run.

`scope_for(run).pending(stage, site_id)` is the one place the engine and the estimate ask.
"""
from sqlalchemy import func, select, union

from ..extensions import db
from ..models import Cluster, Content, ContentIdea, Image, Keyword, RunItemFailure, Task
from .stages import STAGES


class AllPending:
    retry_of = None

    def pending(self, stage, site_id):
        return stage.pending(site_id)

    def count(self, stage, site_id):
        q = self.pending(stage, site_id).with_only_columns(stage.model.id)
        return db.session.execute(select(func.count()).select_from(q.subquery())).scalar()

    def counts(self, site_id):
        return {n: self.count(s, site_id) for n, s in STAGES.items()}


ALL = AllPending()


# What each stage's items are, and how an item joins to its parent one stage up.
MODELS = {1: Keyword, 2: Cluster, 3: ContentIdea, 4: Task, 5: Content, 6: Image}
JOIN_UP = {2: (Cluster, Cluster.id == Keyword.cluster_id), 3: (ContentIdea, ContentIdea.cluster_id == Cluster.id),
           4: (Task, Task.idea_id == ContentIdea.id), 5: (Content, Content.task_id == Task.id),
           6: (Image, Image.content_id == Content.id)}


class RetryScope(AllPending):
    """Stage n may take: the source run's failures at stage n, plus the descendants at stage n
    of its failures at earlier stages (by foreign key: keyword -> cluster -> idea -> task ->
    content -> image; review takes content). Built as one flat UNION of join chains: SQLite
    refuses deeply nested IN/UNION subqueries."""

    def __init__(self, source_run_id):
        self.retry_of = int(source_run_id)

    def _descendants(self, m, n, column=None):
        """Ids (or `column`) of the stage-n items descending from the stage-m failures."""
        q = select(column if column is not None else MODELS[n].id).select_from(RunItemFailure)
        q = q.join(MODELS[m], MODELS[m].id == RunItemFailure.item_id)
        for k in range(m + 1, n + 1):
            q = q.join(*JOIN_UP[k])
        return q.where(RunItemFailure.run_id == self.retry_of, RunItemFailure.stage == m)

    def allowed(self, n):
        """A SELECT of the ids stage n may take."""
        if n <= 6:
            parts = [self._descendants(m, n) for m in range(1, n + 1)]
        else:  # review: failures at 7, drafts from stages <= 5, content of images from stages <= 6
            parts = [select(RunItemFailure.item_id).where(RunItemFailure.run_id == self.retry_of,
                                                          RunItemFailure.stage == 7)]
            parts += [self._descendants(m, 5) for m in range(1, 6)]
            parts += [self._descendants(m, 6, Image.content_id) for m in range(1, 7)]
        u = union(*parts).subquery()
        return select(u.c[0])

    def pending(self, stage, site_id):
        return stage.pending(site_id).where(stage.model.id.in_(self.allowed(stage.number)))


def scope_for(run):
    return RetryScope(run.retry_of_run_id) if run.retry_of_run_id else ALL

