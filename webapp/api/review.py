"""The review queue over the API: approve / reject one article, or many at once.
(The queue itself is `GET /writer/content/?status=review`.)"""
from flask import g

from ..errors import AppError
from ..writer.review import ReviewError, ReviewService
from . import bp
from .context import api_auth, json_body
from .errors import ApiError, ok
from .planner import content_dict

CONTENT = "/writer/content/<int(max=2147483647):content_id>"


def service():
    return ReviewService(g.account_id, g.user.email)


def _body():
    """The JSON body, or {} when there is none (approve needs none; reject then names `note`)."""
    from flask import request
    if not request.get_data():
        return {}
    return json_body()


def _decide(content_id, action):
    data = _body()
    unknown = sorted(set(data) - {"note"})
    if unknown:
        raise ReviewError({unknown[0]: "is not a known field"})
    try:
        content = service().decide(content_id, action, data.get("note"))
    except ReviewError:
        raise
    except AppError as e:
        raise ApiError(e.message, e.status)
    return ok({"content": content_dict(content)})


@bp.post(CONTENT + "/approve")
@bp.post(CONTENT + "/approve/")
@api_auth
def approve(content_id):
    return _decide(content_id, "approve")


@bp.post(CONTENT + "/reject")
@bp.post(CONTENT + "/reject/")
@api_auth
def reject(content_id):
    return _decide(content_id, "reject")


@bp.post("/writer/content/bulk_review")
@bp.post("/writer/content/bulk_review/")
@api_auth
def bulk_review():
    data = json_body()
    unknown = sorted(set(data) - {"ids", "action", "note"})
    if unknown:
        raise ReviewError({unknown[0]: "is not a known field"})
    if "action" not in data:
        raise ReviewError({"action": "is required: 'approve' or 'reject'"})
    if "ids" not in data:
        raise ReviewError({"ids": "is required"})
    items = service().bulk(data["ids"], data["action"], data.get("note"))
    return ok({"updated": len(items), "status": items[0].status if items else None,
               "items": [content_dict(c) for c in items]})
