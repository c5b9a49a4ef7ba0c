"""Keyword import and the read-only lists of what the pipeline made (paginated)."""
from flask import g, request
from sqlalchemy import func, select

from ..automation.service import AutomationService
from ..errors import AppError
from ..extensions import db
from ..models import Cluster, Content, ContentIdea, Image, Keyword, Task
from ..models.base import iso
from ..planner import import_rows, parse_csv
from ..writer.review import CONTENT_STATUSES
from . import bp
from .context import api_auth, int_param
from .errors import ApiError, ok

MAX_PER_PAGE = 200


def scoped_site():
    try:
        return AutomationService(g.account_id).site(int_param("site_id"))
    except AppError as e:
        raise ApiError(e.message, e.status)


@bp.post("/planner/keywords/bulk")
@bp.post("/planner/keywords/bulk/")
@api_auth
def keywords_bulk():
    site = scoped_site()
    try:
        if request.mimetype == "application/json":
            data = request.get_json(silent=True)
            if not isinstance(data, dict) or "keywords" not in data:
                raise ApiError("JSON body must be an object with a 'keywords' list.", 400)
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
        raise ApiError(e.message, e.status)
    return ok(report, 201 if report["created"] else 200)


def _page(query, model, serialize):
    page = int_param("page", required=False, default=1, maximum=1_000_000)
    per_page = int_param("per_page", required=False, default=50, maximum=MAX_PER_PAGE)
    total = db.session.execute(select(func.count()).select_from(query.with_only_columns(model.id).subquery())).scalar()
    rows = db.session.execute(query.order_by(model.id).offset((page - 1) * per_page).limit(per_page)).scalars()
    return ok({"items": [serialize(r) for r in rows], "page": page, "per_page": per_page, "total": total})


def status_filter(statuses):
    """`?status=` on a list: one of `statuses`, or a 400 naming the parameter."""
    def apply(q, model):
        status = request.args.get("status")
        if status is None or status == "":
            return q
        if status not in statuses:
            raise ApiError(f"'status' must be one of: {', '.join(statuses)}.", 400)
        return q.where(model.status == status)
    return apply


def _list_route(path, model, serialize, extra_filter=None):
    def view():
        site = scoped_site()
        q = select(model).where(model.site_id == site.id, model.account_id == g.account_id)
        if extra_filter:
            q = extra_filter(q, model)
        return _page(q, model, serialize)
    view.__name__ = f"list_{path.strip('/').replace('/', '_')}"
    wrapped = api_auth(view)
    bp.add_url_rule(path, view.__name__, wrapped, methods=["GET"])
    bp.add_url_rule(path + "/", view.__name__ + "_slash", wrapped, methods=["GET"])


def image_dict(i):
    return {"id": i.id, "content_id": i.content_id, "position": i.position, "kind": i.kind, "prompt": i.prompt,
            "status": i.status, "url": f"/media/images/{i.id}.png" if i.file_path else None}


def content_dict(c, body=False):
    d = {"id": c.id, "task_id": c.task_id, "title": c.title, "status": c.status, "word_count": c.word_count,
         "created_at": iso(c.created_at), "review_note": c.review_note, "reviewed_by": c.reviewed_by,
         "reviewed_at": iso(c.reviewed_at)}
    if body:
        d["body"] = c.body
        d["images"] = [image_dict(i) for i in c.images]
    return d


_list_route("/planner/keywords", Keyword, lambda k: {
    "id": k.id, "keyword": k.keyword, "volume": k.volume, "difficulty": k.difficulty, "cluster_id": k.cluster_id})
_list_route("/planner/clusters", Cluster, lambda c: {
    "id": c.id, "name": c.name, "ideas_generated": c.ideas_generated, "keyword_count": len(c.keywords)})
_list_route("/planner/ideas", ContentIdea, lambda i: {
    "id": i.id, "cluster_id": i.cluster_id, "title": i.title, "outline": i.outline, "keywords": i.keywords,
    "status": i.status})
_list_route("/writer/tasks", Task, lambda t: {"id": t.id, "idea_id": t.idea_id, "title": t.title, "status": t.status})
_list_route("/writer/content", Content, content_dict, status_filter(CONTENT_STATUSES))
_list_route("/writer/images", Image, image_dict)


@bp.get("/writer/content/<int(max=2147483647):content_id>")
@bp.get("/writer/content/<int(max=2147483647):content_id>/")
@api_auth
def content_detail(content_id):
    c = db.session.execute(select(Content).where(Content.id == content_id, Content.account_id == g.account_id)).scalar_one_or_none()
    if c is None:
        raise ApiError(f"Content {content_id} not found.", 404)
    return ok({"content": content_dict(c, body=True)})
