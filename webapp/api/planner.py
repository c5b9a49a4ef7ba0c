"""Keyword import and the read-only lists of what the pipeline made (paginated)."""
from flask import current_app, g, request
from sqlalchemy import func, select

from ..automation.service import AutomationService
from ..errors import AppError
from ..extensions import db
from ..models import Cluster, Content, ContentIdea, Image, Keyword, Task
from ..models.base import iso
from .. import imports, validation
from ..planner import estimate_rows, import_rows, parse_csv
from . import schemas as s
from .errors import ApiError, ok
from .spec import endpoint

SITE_ERRORS = {404: "Site not found, or another account's"}
_JSON_BODY = s.KeywordsBulk.model_json_schema()
# JSON only in the document: the CSV alternatives (described in the docstring) would give the
# operation three media types, which client generators turn into code that does not import.
BULK_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": _JSON_BODY}}}}


validation.BIG_BODY_ENDPOINTS.add("api.keywords_bulk")


def scoped_site():
    return AutomationService(g.account_id).site(request.context.query.site_id)


@endpoint("/planner/keywords/bulk", ["POST"], query=s.SiteQuery, status=201, ok=s.ok("ImportResponse", s.ImportReport),
          extra_ok={200: (s.ok("ImportNothingNewResponse", s.ImportReport), "Nothing new imported"),
                    202: (s.ok("ImportQueuedResponse", s.ImportQueued),
                          "More than IMPORT_SYNC_MAX_ROWS rows: queued as a background import; follow "
                          "GET /api/v1/planner/imports/{id}/")},
          errors={**SITE_ERRORS, 409: "A concurrent import added some of the same keywords, or a background "
                                      "import of this site is still running: nothing imported, retry"},
          doc=BULK_BODY, tags=["planner"], links={
              "run_now": ("run_now", {"site_id": "$request.query.site_id"}),
              "keywords": ("list_planner_keywords", {"site_id": "$request.query.site_id"})})
def keywords_bulk():
    """Import keywords; duplicates are skipped and counted, bad rows reported by row number.

    The body is JSON `{"keywords": [...]}`, or a CSV: as the body itself (`Content-Type: text/csv`)
    or as a multipart upload's `file` field; a header `keyword[,volume][,difficulty]`, or one
    keyword per line. Any text is a CSV (bad rows are reported, not refused). Over the site's
    keyword quota nothing is imported (400). More than IMPORT_SYNC_MAX_ROWS rows run in the
    background: 202 with `data.import` `{id, status, total, done}` and a `Location` header."""
    site = scoped_site()
    sync_max = current_app.config["IMPORT_SYNC_MAX_ROWS"]
    try:
        imports.refuse_if_busy(site)
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
            if len(rows) > sync_max:
                import json
                return queued(imports.start(site, json.dumps(rows).encode(), "json", len(rows), g.actor))
        else:
            if "file" in request.files:
                raw = request.files["file"].read()
                bad = ApiError("'file' must be a UTF-8 CSV file.", 400, {"file": "must be a UTF-8 CSV file"})
            elif request.mimetype in ("text/csv", "text/plain"):
                raw = request.get_data()
                bad = ApiError("The CSV body must be UTF-8.", 400)
            else:
                raise ApiError("Send JSON {'keywords': [...]}, a CSV body (text/csv) or a multipart 'file'.", 415)
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError:
                raise bad
            if estimate_rows(text) > sync_max:
                return queued(imports.start(site, raw, "csv", estimate_rows(text), g.actor))
            rows = parse_csv(text)
        report = import_rows(site, rows, actor=g.actor)
    except AppError as e:
        raise ApiError.from_app(e)
    return ok(report, 201 if report["created"] else 200)


def queued(imp):
    resp = ok({"import": imports.to_dict(imp, full=False)}, 202)
    resp[0].headers["Location"] = f"/api/v1/planner/imports/{imp.id}/"
    return resp


@endpoint("/planner/imports/<int(max=2147483647):import_id>", ["GET"], ok=s.ok("ImportStatusResponse", s.ImportStatus),
          errors={404: "Import not found, or another account's"}, tags=["planner"])
def keyword_import(import_id):
    """A background keyword import: its status and progress (`done` of `total` rows), then its report."""
    try:
        imp = imports.get(g.account_id, import_id)
    except AppError as e:
        raise ApiError.from_app(e)
    return ok({"import": imports.to_dict(imp)})


def _page(query, model, serialize):
    page, per_page = request.context.query.page, request.context.query.per_page
    total = db.session.execute(select(func.count()).select_from(query.with_only_columns(model.id).subquery())).scalar()
    # A page past the end is answered without asking the database to skip `offset` rows.
    rows = [] if (page - 1) * per_page >= total else db.session.execute(
        query.order_by(model.id).offset((page - 1) * per_page).limit(per_page)).scalars()
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
