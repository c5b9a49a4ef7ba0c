"""/api/v1/sites/<site_id>/webhooks/… : thin views over notify.webhooks.WebhookService."""
from flask import g, request

from ..notify.webhooks import WebhookService
from . import schemas as s
from .context import json_body
from .errors import ok
from .spec import endpoint

SITE = "/sites/<int(max=2147483647):site_id>/webhooks"
HOOK = SITE + "/<int(max=2147483647):webhook_id>"
SITE_404 = {404: "Site not found, or another account's"}
HOOK_404 = {404: "Site or webhook not found, or another account's"}


def service():
    return WebhookService(g.account_id, actor=g.actor)


@endpoint(SITE, ["GET"], ok=s.ok("WebhooksResponse", s.Webhooks), errors=SITE_404, tags=["webhooks"])
def list_webhooks(site_id):
    """The site's webhooks (secrets are shown only when created)."""
    return ok({"webhooks": [w.to_dict() for w in service().list(site_id)]})


@endpoint(SITE, ["POST"], status=201, ok=s.ok("WebhookCreatedResponse", s.WebhookCreated), body_doc=s.WebhookCreate,
          errors={**SITE_404, 400: "Invalid input (`errors` names the fields; private or local targets are refused), "
                  "or the site has its 20 webhooks already",
                  409: "The site already has a webhook for this URL and these events"}, tags=["webhooks"],
          links={"deliveries": ("deliveries", {"site_id": "$request.path.site_id",
                                               "webhook_id": "$response.body#/data/webhook/id"}),
                 "test": ("send_test", {"site_id": "$request.path.site_id",
                                        "webhook_id": "$response.body#/data/webhook/id"})})
def create_webhook(site_id):
    """Add a webhook: signed POSTs (X-Automation-Signature) for the chosen run events."""
    svc = service()
    svc.site(site_id)  # a foreign site is 404 before the body is judged
    wh = svc.create(site_id, json_body())
    return ok({"webhook": wh.to_dict(secret=True)}, 201)


@endpoint(HOOK, ["DELETE"], ok=s.ok("WebhookDeletedResponse", s.WebhookDeleted), errors=HOOK_404, tags=["webhooks"])
def delete_webhook(site_id, webhook_id):
    """Remove a webhook (its deliveries go with it)."""
    return ok({"deleted": service().delete(site_id, webhook_id)})


@endpoint(HOOK + "/deliveries", ["GET"], query=s.DeliveryQuery, ok=s.ok("DeliveriesResponse", s.Deliveries),
          errors=HOOK_404, tags=["webhooks"])
def deliveries(site_id, webhook_id):
    """The webhook's deliveries, newest first, each with its attempts."""
    q = request.context.query
    items, total = service().deliveries(site_id, webhook_id, q.page, q.limit)
    return ok({"deliveries": items, "page": q.page, "limit": q.limit, "total": total})


@endpoint(HOOK + "/test", ["POST"], status=202, ok=s.ok("DeliveryQueuedResponse", s.DeliveryQueued),
          errors=HOOK_404, tags=["webhooks"])
def send_test(site_id, webhook_id):
    """Queue a `test` delivery carrying the site's latest run."""
    return ok({"delivery": service().send_test(site_id, webhook_id).to_dict()}, 202)
