"""The seven stages (SPEC §4). Each is one small unit with the same shape:

    pending(site_id)            -> a SELECT of the items waiting for this stage
    label(item)                 -> what the UI shows as "currently processing"
    prepare(ctx, unit)          -> read the unit's inputs: a plain-data request (no ORM objects)
    call(provider, request)     -> the AI call (None for stages without AI); runs on a pool
                                   thread, so it must not touch the database
    apply(ctx, unit, request, result)
                                -> write the unit's output and charge it, inside the caller's
                                   transaction; return the number of rows created
    process(ctx, unit)          -> the three in a row (one unit, no concurrency)

A unit is one item, except stage 1 where one AI call clusters a whole batch of keywords.
Pending is always derived from the data (never from a cursor), so after a crash or a pause
the next batch simply picks up what is still pending; conditional updates (`... WHERE
status = 'new'`) and unique constraints make doing an item twice impossible.
"""
from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.orm import joinedload

from ..ai.text import terms
from ..extensions import db
from ..models import Cluster, Content, ContentIdea, Image, Keyword, Task
from ..storage import get_store
from ..storage.keys import image_key, image_rel_path
from .costs import credits_for


class AlreadyDone(Exception):
    """Another worker got there first: roll back, nothing to charge."""


class Stale(Exception):
    """The unit's inputs changed while its AI call was in flight (stage 1: a batch before it
    created a cluster it could join): roll back and call again with the new inputs."""


def _guarded(stmt, expected=1):
    # No session synchronisation: the worker keeps its loaded objects across commits (one
    # job may load a few hundred items), and evaluating each guarded UPDATE against all of
    # them was a third of the job thread's time. Nothing reads an item back after its update.
    res = db.session.execute(stmt, execution_options={"synchronize_session": False})
    if res.rowcount != expected:
        raise AlreadyDone()


class Stage:
    number = 0
    name = ""
    model = None
    function = None  # AI function name (None = no AI)
    item_type = ""
    batched = False

    def pending(self, site_id):
        raise NotImplementedError

    def label(self, item):
        raise NotImplementedError

    def units(self, items, size=None):
        if not self.batched:
            return [[i] for i in items]
        size = size or len(items) or 1
        return [items[i:i + size] for i in range(0, len(items), size)]

    def unit_id(self, unit):
        return unit[0].id

    def prepare(self, ctx, unit):
        return None

    def call(self, provider, request):
        return None

    def apply(self, ctx, unit, request, result):
        raise NotImplementedError

    def process(self, ctx, unit):
        request = self.prepare(ctx, unit)
        return self.apply(ctx, unit, request, self.call(ctx.provider, request))


class KeywordsToClusters(Stage):
    number, name, model, function, item_type, batched = 1, "Keywords → Clusters", Keyword, "auto_cluster", "keyword", True

    def pending(self, site_id):
        return select(Keyword).where(Keyword.site_id == site_id, Keyword.cluster_id.is_(None))

    def label(self, item):
        return item.keyword

    def _existing(self, site_id, keywords):
        words = sorted({t for k in keywords for t in terms(k)})
        if not words:
            return []
        # Ordered: the provider's choice among matching clusters must not depend on row order.
        return [tuple(e) for e in db.session.execute(
            select(Cluster.name, Cluster.terms).where(Cluster.site_id == site_id, Cluster.terms.in_(words))
            .order_by(Cluster.id)).all()]

    def prepare(self, ctx, unit):
        keywords = [k.keyword for k in unit]
        return {"keywords": keywords, "existing": self._existing(ctx.run.site_id, keywords)}

    def call(self, provider, request):
        return provider.cluster_keywords(request["keywords"], request["existing"])

    def apply(self, ctx, unit, request, result):
        run = ctx.run
        # While the run stops, an answer that arrived is applied as it is: asking again would
        # bill the provider twice (its clusters are joined by name, so nothing is duplicated).
        if not getattr(ctx, "accept_stale", False) and \
                self._existing(run.site_id, request["keywords"]) != request["existing"]:
            raise Stale()
        by_text = {k.keyword: k for k in unit}
        created = 0
        for c in result.data:
            cluster = db.session.execute(
                select(Cluster).where(Cluster.site_id == run.site_id, Cluster.name == c["name"])
            ).scalar_one_or_none()
            if cluster is None:
                cluster = Cluster(account_id=run.account_id, site_id=run.site_id, name=c["name"], terms=c["terms"])
                db.session.add(cluster)
                db.session.flush()
                created += 1
            ids = [by_text[k].id for k in c["keywords"] if k in by_text]
            _guarded(update(Keyword).where(Keyword.id.in_(ids), Keyword.cluster_id.is_(None))
                     .values(cluster_id=cluster.id), expected=len(ids))
            if ids:  # new keywords in a cluster whose ideas exist: stage 2 writes ideas for them
                db.session.execute(update(Cluster).where(Cluster.id == cluster.id, Cluster.ideas_generated.is_(True))
                                   .values(ideas_generated=False), execution_options={"synchronize_session": False})
        ctx.charge(self, unit[0].id, credits_for(self.function, len(unit), result.tokens), result)
        return created


class ClustersToIdeas(Stage):
    """A cluster is pending while any of its keywords has no idea (`Keyword.ideas_generated`):
    a new cluster gets ideas for all its keywords; a keyword that joined a cluster whose ideas
    exist gets ideas of its own, the AI seeing the existing titles so as not to repeat them."""
    number, name, model, function, item_type = 2, "Clusters → Ideas", Cluster, "generate_ideas", "cluster"

    def pending(self, site_id):
        return select(Cluster).where(Cluster.site_id == site_id, Cluster.ideas_generated.is_(False))

    def label(self, item):
        return item.name

    def prepare(self, ctx, unit):
        cluster = unit[0]
        kws = db.session.execute(select(Keyword.id, Keyword.keyword).where(
            Keyword.cluster_id == cluster.id, Keyword.ideas_generated.is_(False)).order_by(Keyword.id)).all()
        existing = db.session.execute(select(ContentIdea.title).where(ContentIdea.cluster_id == cluster.id)
                                      .order_by(ContentIdea.id)).scalars().all()
        return {"name": cluster.name, "keywords": [k for _, k in kws], "keyword_ids": [i for i, _ in kws],
                "existing": list(existing)}

    def call(self, provider, request):
        if not request["keywords"]:
            return None  # every keyword is covered already (a cluster left pending): no call, no charge
        return provider.generate_ideas(request["name"], request["keywords"], request["existing"])

    def apply(self, ctx, unit, request, result):
        cluster = unit[0]
        ids = request["keyword_ids"]
        if ids:
            _guarded(update(Keyword).where(Keyword.id.in_(ids), Keyword.cluster_id == cluster.id,
                                           Keyword.ideas_generated.is_(False))
                     .values(ideas_generated=True), expected=len(ids))
        # Covered now, unless a keyword joined while the call was in flight (then it stays pending).
        uncovered = exists().where(Keyword.cluster_id == cluster.id, Keyword.ideas_generated.is_(False))
        _guarded(update(Cluster).where(Cluster.id == cluster.id, Cluster.ideas_generated.is_(False), ~uncovered)
                 .values(ideas_generated=True))
        if result is None:
            return 0
        seen = set(request["existing"])
        created = 0
        for idea in result.data:
            if idea["title"] in seen:  # the unique (cluster, title): never repeat an existing idea
                continue
            seen.add(idea["title"])
            created += 1
            db.session.add(ContentIdea(account_id=cluster.account_id, site_id=cluster.site_id, cluster_id=cluster.id,
                                       title=idea["title"], outline=idea["outline"],
                                       keywords=", ".join(idea["keywords"])))
        ctx.charge(self, cluster.id, credits_for(self.function, 1, result.tokens), result)
        return created


class IdeasToTasks(Stage):
    number, name, model, item_type = 3, "Ideas → Tasks", ContentIdea, "idea"

    def pending(self, site_id):
        return select(ContentIdea).where(ContentIdea.site_id == site_id, ContentIdea.status == "new")

    def label(self, item):
        return item.title

    def apply(self, ctx, unit, request, result):
        idea = unit[0]
        _guarded(update(ContentIdea).where(ContentIdea.id == idea.id, ContentIdea.status == "new")
                 .values(status="queued"))
        db.session.add(Task(account_id=idea.account_id, site_id=idea.site_id, idea_id=idea.id, title=idea.title))
        return 1


class TasksToContent(Stage):
    number, name, model, function, item_type = 4, "Tasks → Content", Task, "generate_content", "task"

    def pending(self, site_id):
        # The idea comes with its task (prepare reads its outline): one query per batch, not per item.
        return select(Task).options(joinedload(Task.idea)).where(Task.site_id == site_id, Task.status == "queued")

    def label(self, item):
        return item.title

    def prepare(self, ctx, unit):
        task = unit[0]
        idea = task.idea
        # A task queued again by "reject and rewrite" has its article: the reviewer's note goes to the AI.
        prior = db.session.execute(select(Content.id, Content.version, Content.review_note).where(
            Content.task_id == task.id, Content.status == "rejected")).first()
        return {"title": task.title, "outline": idea.outline, "words": ctx.article_words,
                "keywords": [k.strip() for k in idea.keywords.split(",") if k.strip()],
                "rewrite_of": prior.id if prior else None, "version": prior.version if prior else 0,
                "note": prior.review_note if prior else None}

    def call(self, provider, request):
        if request.get("note"):
            return provider.generate_content(request["title"], request["outline"], request["keywords"],
                                             request["words"], note=request["note"])
        return provider.generate_content(request["title"], request["outline"], request["keywords"], request["words"])

    def apply(self, ctx, unit, request, result):
        task = unit[0]
        _guarded(update(Task).where(Task.id == task.id, Task.status == "queued").values(status="completed"))
        if request.get("rewrite_of"):
            _rewrite(request, result)
        else:
            db.session.add(Content(account_id=task.account_id, site_id=task.site_id, task_id=task.id,
                                   title=task.title, body=result.data["body"], word_count=result.data["word_count"]))
        ctx.charge(self, task.id, credits_for(self.function, 1, result.tokens), result)
        return 1


def _rewrite(request, result):
    """The rejected article becomes its next version; the earlier text and its review are kept.
    Its images stay (the title is the same), so the draft goes on to the review gate."""
    content = db.session.execute(select(Content).where(Content.id == request["rewrite_of"])).scalar_one()
    if content.status != "rejected" or content.version != request["version"]:
        raise AlreadyDone()
    kept = list(content.previous_versions or []) + [{
        "version": content.version, "title": content.title, "body": content.body, "word_count": content.word_count,
        "review_note": content.review_note, "reviewed_by": content.reviewed_by,
        "reviewed_at": content.reviewed_at.isoformat() + "Z" if content.reviewed_at else None}]
    _guarded(update(Content).where(Content.id == content.id, Content.status == "rejected",
                                   Content.version == request["version"])
             .values(body=result.data["body"], word_count=result.data["word_count"], version=content.version + 1,
                     previous_versions=kept, status="draft", review_note=None, reviewed_by=None,
                     reviewed_at=None))


class ContentToPrompts(Stage):
    number, name, model, function, item_type = 5, "Content → Image prompts", Content, "generate_image_prompts", "content"

    def pending(self, site_id):
        return select(Content).where(Content.site_id == site_id, Content.status == "draft",
                                     Content.prompts_generated.is_(False))

    def label(self, item):
        return item.title

    def prepare(self, ctx, unit):
        return {"title": unit[0].title, "body": unit[0].body}

    def call(self, provider, request):
        return provider.generate_image_prompts(request["title"], request["body"])

    def apply(self, ctx, unit, request, result):
        content = unit[0]
        _guarded(update(Content).where(Content.id == content.id, Content.prompts_generated.is_(False))
                 .values(prompts_generated=True))
        for pos, prompt in enumerate(result.data):
            db.session.add(Image(account_id=content.account_id, site_id=content.site_id, content_id=content.id,
                                 position=pos, kind="featured" if pos == 0 else "in_article", prompt=prompt))
        ctx.charge(self, content.id, credits_for(self.function, 1, result.tokens), result)
        return len(result.data)


class PromptsToImages(Stage):
    number, name, model, function, item_type = 6, "Image prompts → Images", Image, "generate_image", "image"

    def pending(self, site_id):
        return select(Image).where(Image.site_id == site_id, Image.status == "pending")

    def label(self, item):
        return f"image {item.position + 1} of content {item.content_id}"

    def prepare(self, ctx, unit):
        return {"prompt": unit[0].prompt}

    def call(self, provider, request):
        return provider.generate_image(request["prompt"])

    def apply(self, ctx, unit, request, result):
        image = unit[0]
        # Key from integer ids only. Written to the store (webapp/storage/) before commit: if
        # the commit fails the object is simply overwritten by the retry; a committed row
        # always has its object.
        get_store().put(image_key(image.account_id, image.site_id, image.id), result.data, "image/png")
        _guarded(update(Image).where(Image.id == image.id, Image.status == "pending")
                 .values(status="generated", file_path=image_rel_path(image.account_id, image.site_id, image.id)))
        ctx.charge(self, image.id, credits_for(self.function, 1, result.tokens), result)
        return 1


class ReviewGate(Stage):
    number, name, model, item_type = 7, "Review gate", Content, "content"

    def pending(self, site_id):
        unfinished = exists().where(and_(Image.content_id == Content.id, Image.status != "generated"))
        return select(Content).where(Content.site_id == site_id, Content.status == "draft",
                                     Content.prompts_generated.is_(True), ~unfinished)

    def label(self, item):
        return item.title

    def apply(self, ctx, unit, request, result):
        content = unit[0]
        _guarded(update(Content).where(Content.id == content.id, Content.status == "draft").values(status="review"))
        return 1


STAGES = {s.number: s for s in (KeywordsToClusters(), ClustersToIdeas(), IdeasToTasks(), TasksToContent(),
                                ContentToPrompts(), PromptsToImages(), ReviewGate())}


def _count_query(stage, site_id):
    return select(func.count()).select_from(stage.pending(site_id).with_only_columns(stage.model.id).subquery())


def pending_count(stage, site_id):
    return db.session.execute(_count_query(stage, site_id)).scalar()


def pending_counts(site_id, account_id=None):
    """All seven pending counts in one statement (one round trip; each is an indexed count).
    With account_id, the site's ownership is checked in the same statement: None if not owned."""
    cols = [_count_query(s, site_id).scalar_subquery().label(f"s{n}") for n, s in STAGES.items()]
    if account_id is not None:
        from ..models import Site
        cols.append(exists().where(Site.id == site_id, Site.account_id == account_id).label("owned"))
    row = db.session.execute(select(*cols)).one()
    if account_id is not None and not row[-1]:
        return None
    return dict(zip(STAGES, row))
