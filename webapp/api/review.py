"""The review queue over the API: approve / reject one article, or many at once.
(The queue itself is `GET /writer/content/?status=review`.)"""
from flask import g, request

from ..writer.review import ReviewError, ReviewService
from . import schemas as s
from .context import json_body
from .errors import ok
from .planner import content_dict
from .spec import endpoint

CONTENT = "/writer/content/<int(max=2147483647):content_id>"
ERRORS = {400: "Invalid input (`errors` names the field), or the article is not in review",
          404: "Content not found, or another account's"}


def service():
    return ReviewService(g.account_id, g.user.email)


def _body():
    """The JSON body, or {} when there is none (approve needs none; reject then names `note`)."""
    if not request.get_data():
        return {}
    return json_body()


def _decide(content_id, action):
    data = _body()
    unknown = sorted(set(data) - ({"note", "regenerate"} if action == "reject" else {"note"}))
    if unknown:
        raise ReviewError({unknown[0]: "is not a known field"})
    content = service().decide(content_id, action, data.get("note"), data.get("regenerate", False))
    return ok({"content": content_dict(content)})


@endpoint(CONTENT + "/approve", ["POST"], ok=s.ok("ApproveResponse", s.ContentReviewed), body_doc=s.ApproveBody,
          body_required=False, errors=ERRORS, tags=["writer"])
def approve(content_id):
    """Approve an article in review."""
    return _decide(content_id, "approve")


@endpoint(CONTENT + "/reject", ["POST"], ok=s.ok("RejectResponse", s.ContentReviewed), body_doc=s.RejectBody,
          errors=ERRORS, tags=["writer"])
def reject(content_id):
    """Reject an article in review, with a note saying what to change; `"regenerate": true`
    sends it back to Tasks → Content: the next run rewrites it with the note (charged as an
    article) and it returns to review as its next `version`."""
    return _decide(content_id, "reject")


@endpoint("/writer/content/bulk_review", ["POST"], ok=s.ok("BulkReviewResponse", s.BulkReviewed),
          body_doc=s.BulkReviewBody, errors={**ERRORS, 404: "Some ids not found (or another account's)"},
          tags=["writer"])
def bulk_review():
    """Approve or reject many articles in review at once (all or nothing)."""
    data = json_body()
    unknown = sorted(set(data) - {"ids", "action", "note", "regenerate"})
    if unknown:
        raise ReviewError({unknown[0]: "is not a known field"})
    if "action" not in data:
        raise ReviewError({"action": "is required: 'approve' or 'reject'"})
    if "ids" not in data:
        raise ReviewError({"ids": "is required"})
    items = service().bulk(data["ids"], data["action"], data.get("note"), regenerate=data.get("regenerate", False))
    return ok({"updated": len(items), "status": items[0].status if items else None,
               "items": [content_dict(c) for c in items]})
