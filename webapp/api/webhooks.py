"""/api/v1/sites/<site_id>/webhooks/… : thin views over notify.webhooks.WebhookService."""
from flask import g

from ..errors import AppError
from ..notify.webhooks import FieldErrors, WebhookService
from . import bp
from .context import api_auth, int_param, json_body
from .errors import ApiError, ok

SITE = "/sites/<int(max=2147483647):site_id>/webhooks"
HOOK = SITE + "/<int(max=2147483647):webhook_id>"


def route(path, methods):
    def deco(fn):
        @api_auth
        def view(**kw):
            try:
                return fn(WebhookService(g.account_id, actor=g.actor), **kw)
            except FieldErrors:
                raise
            except AppError as e:
                raise ApiError(e.message, e.status)
        view.__name__ = fn.__name__
        bp.add_url_rule(path, f"webhooks_{fn.__name__}", view, methods=methods)
        bp.add_url_rule(path + "/", f"webhooks_{fn.__name__}_slash", view, methods=methods)
        return fn
    return deco


@route(SITE, ["GET"])
def list_webhooks(svc, site_id):
    return ok({"webhooks": [w.to_dict() for w in svc.list(site_id)]})


@route(SITE, ["POST"])
def create_webhook(svc, site_id):
    svc.site(site_id)  # a foreign site is 404 before the body is judged
    wh = svc.create(site_id, json_body())
    return ok({"webhook": wh.to_dict(secret=True)}, 201)


@route(HOOK, ["DELETE"])
def delete_webhook(svc, site_id, webhook_id):
    return ok({"deleted": svc.delete(site_id, webhook_id)})


@route(HOOK + "/deliveries", ["GET"])
def deliveries(svc, site_id, webhook_id):
    page = int_param("page", required=False, default=1, maximum=1_000_000)
    limit = int_param("limit", required=False, default=20, maximum=100)
    items, total = svc.deliveries(site_id, webhook_id, page, limit)
    return ok({"deliveries": items, "page": page, "limit": limit, "total": total})


@route(HOOK + "/test", ["POST"])
def send_test(svc, site_id, webhook_id):
    d = svc.send_test(site_id, webhook_id)
    return ok({"delivery": d.to_dict()}, 202)
