"""Keyword import and the read-only lists of what the pipeline made (paginated)."""
from flask import g, request
from sqlalchemy import func, select

from ..automation.service import AutomationService
from ..errors import AppError
from ..extensions import db
from ..models import Cluster, Content, ContentIdea, Image, Keyword, Task
from ..models.base import iso
from ..planner import import_rows, parse_csv
from . import schemas as s
from .errors import ApiError, ok
from .spec import endpoint

SITE_ERRORS = {404: "Site not found, or another account's"}
_JSON_BODY = s.KeywordsBulk.model_json_schema()
BULK_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _JSON_BODY},
    # Any text is a CSV (bad rows are reported, not refused): no constraint to break.
    "text/csv": {"schema": {"description": "CSV with a header keyword[,volume][,difficulty], or one keyword "
                                           "per line"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}}}}}


def scoped_site():
    return AutomationService(g.account_id).site(request.context.query.site_id)


@endpoint("/planner/keywords/bulk", ["POST"], query=s.SiteQuery, status=201, ok=s.ok("ImportResponse", s.ImportReport),
          extra_ok={200: (s.ok("ImportNothingNewResponse", s.ImportReport), "Nothing new imported")},
          errors={**SITE_ERRORS, 409: "A concurrent import added some of the same keywords: nothing imported, retry"},
          doc=BULK_BODY, tags=["planner"], links={
              "run_now": ("run_now", {"site_id": "$request.query.site_id"}),
              "keywords": ("list_planner_keywords", {"site_id": "$request.query.site_id"})})
def keywords_bulk():
    """Import keywords: JSON, a CSV body or a multipart CSV `file`; duplicates are skipped and counted,
    bad rows reported by row number."""
    site = scoped_site()
    try:
        if request.mimetype == "application/json":
            data = request.get_json(silent=True)
            if not isinstance(data, dict) or "keywords" not in data:
                raise ApiError("JSON body must be an object with a 'keywords' list.", 400,
                               {"keywords": "is required" if isinstance(data, dict) else "JSON body must be an object"})
            extra = sorted(set(data) - {"keywords"})
            if extra:
                raise ApiError(errors={k: "is not a known field" for k in extra})
            if not isinstance(data["keywords"], list):
                raise ApiError(errors={"keywords": "must be a list"})
            rows = data["keywords"]
        elif "file" in request.files:
            raw = request.files["file"].read()
            try:
                rows = parse_csv(raw.decode("utf-8-sig"))
            except UnicodeDecodeError:
                raise ApiError("'file' must be a UTF-8 CSV file.", 400)
        elif request.mimetype in ("text/csv", "text/plain"):
            try:
                rows = parse_csv(request.get_data().decode("utf-8-sig"))
            except UnicodeDecodeError:
                raise ApiError("The CSV body must be UTF-8.", 400)
        else:
            raise ApiError("Send JSON {'keywords': [...]}, a CSV body (text/csv) or a multipart 'file'.", 415)
        report = import_rows(site, rows, actor=g.actor)
    except AppError as e:
        raise ApiError.from_app(e)
    return ok(report, 201 if report["created"] else 200)


def _page(query, model, serialize):
    page, per_page = request.context.query.page, request.context.query.per_page
    total = db.session.execute(select(func.count()).select_from(query.with_only_columns(model.id).subquery())).scalar()
    rows = db.session.execute(query.order_by(model.id).offset((page - 1) * per_page).limit(per_page)).scalars()
    return ok({"items": [serialize(r) for r in rows], "page": page, "per_page": per_page, "total": total})


def _list_route(path, model, serialize, page_model, query=s.PageQuery):
    def view():
        site = scoped_site()
        q = select(model).where(model.site_id == site.id, model.account_id == g.account_id)
        status = getattr(request.context.query, "status", None)
        if status:
            q = q.where(model.status == status)
        return _page(q, model, serialize)
    view.__name__ = f"list_{path.strip('/').replace('/', '_')}"
    view.__doc__ = f"The site's {path.strip('/').split('/')[-1]}, by id, a page at a time."
    endpoint(path, ["GET"], query=query, ok=s.ok(page_model.__name__ + "Response", page_model),
             errors=SITE_ERRORS, tags=[path.strip("/").split("/")[0]])(view)


def image_dict(i):
    return {"id": i.id, "content_id": i.content_id, "position": i.position, "kind": i.kind, "prompt": i.prompt,
            "status": i.status, "url": f"/media/images/{i.id}.png" if i.file_path else None}


def content_dict(c, body=False):
    d = {"id": c.id, "task_id": c.task_id, "title": c.title, "status": c.status, "word_count": c.word_count,
         "created_at": iso(c.created_at), "review_note": c.review_note, "reviewed_by": c.reviewed_by,
         "reviewed_at": iso(c.reviewed_at), "version": c.version, "previous_versions": c.previous_versions or []}
    if body:
        d["body"] = c.body
        d["images"] = [image_dict(i) for i in c.images]
    return d


_list_route("/planner/keywords", Keyword, lambda k: {
    "id": k.id, "keyword": k.keyword, "volume": k.volume, "difficulty": k.difficulty, "cluster_id": k.cluster_id},
    s.KeywordPage)
_list_route("/planner/clusters", Cluster, lambda c: {
    "id": c.id, "name": c.name, "ideas_generated": c.ideas_generated, "keyword_count": len(c.keywords)},
    s.ClusterPage)
_list_route("/planner/ideas", ContentIdea, lambda i: {
    "id": i.id, "cluster_id": i.cluster_id, "title": i.title, "outline": i.outline, "keywords": i.keywords,
    "status": i.status}, s.IdeaPage)
_list_route("/writer/tasks", Task, lambda t: {"id": t.id, "idea_id": t.idea_id, "title": t.title, "status": t.status},
            s.TaskPage)
_list_route("/writer/content", Content, content_dict, s.ContentPage, query=s.ContentPageQuery)
_list_route("/writer/images", Image, image_dict, s.ImagePage)


@endpoint("/writer/content/<int(max=2147483647):content_id>", ["GET"],
          ok=s.ok("ContentDetailResponse", s.ContentDetail), errors={404: "Content not found, or another account's"},
          tags=["writer"])
def content_detail(content_id):
    """One article with its body and images."""
    c = db.session.execute(select(Content).where(Content.id == content_id, Content.account_id == g.account_id)).scalar_one_or_none()
    if c is None:
        raise ApiError(f"Content {content_id} not found.", 404)
    return ok({"content": content_dict(c, body=True)})
