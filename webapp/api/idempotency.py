"""`Idempotency-Key` on run_now, pause, resume and cancel: a client that retries after a
timeout, with the same key, gets the first answer again instead of acting twice (or a 400
"already active" for its own run).

The first answer (status + body, any status below 500) is kept in Redis for 24 h under the
caller's account, the route and the key, with a fingerprint of the request (query and body):
- same key, same request, answer stored      -> the stored answer, header `Idempotent-Replayed: true`
- same key, same request, first one running  -> 409 (retry a moment later)
- same key, different request                -> 409 (a key names one request)
5xx answers are not kept, so a retry after a server error acts again. Without Redis the
request is simply executed (these actions are safe to repeat: a second pause is a 400).
"""
import hashlib
import json
import logging
from functools import wraps

import redis
from flask import current_app, g, request

from ..errors import AppError
from ..redis_conn import get_redis
from .errors import ApiError

log = logging.getLogger(__name__)
TTL = 24 * 3600
PENDING_TTL = 60  # a crashed first attempt frees its key after this long
HEADER = "Idempotency-Key"


def _fingerprint():
    body = request.get_data(cache=True) or b""
    raw = json.dumps([request.method, request.path.rstrip("/"), sorted(request.args.items(multi=True)),
                      request.mimetype, hashlib.sha256(body).hexdigest()])
    return hashlib.sha256(raw.encode()).hexdigest()


def _key(key):
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"idempotency:{g.account_id}:{request.endpoint}:{digest}"


def _respond(status, body, replayed=False):
    resp = current_app.response_class(body, status=status, mimetype="application/json")
    if replayed:
        resp.headers["Idempotent-Replayed"] = "true"
    return resp


def idempotent(view):
    @wraps(view)
    def inner(*a, **kw):
        key = request.headers.get(HEADER)
        if not key:
            return view(*a, **kw)
        try:
            client = get_redis()
            rkey, fp = _key(key), _fingerprint()
            claimed = client.set(rkey, json.dumps({"fp": fp, "state": "pending"}), nx=True, ex=PENDING_TTL)
        except (redis.RedisError, RuntimeError) as e:
            log.warning("idempotency unavailable (%s): executing without it", e.__class__.__name__)
            return view(*a, **kw)
        if not claimed:
            stored = client.get(rkey)
            entry = json.loads(stored) if stored else None
            if entry is None:  # expired between the two calls: act as a first attempt
                return inner(*a, **kw)
            if entry["fp"] != fp:
                raise ApiError(f"'{HEADER}' was already used for a different request; use a new key.", 409,
                               {HEADER: "already used for a different request"})
            if entry["state"] == "pending":
                raise ApiError(f"A request with this '{HEADER}' is still being processed; retry in a moment.", 409,
                               {HEADER: "the first request with this key is still being processed"})
            return _respond(entry["status"], entry["body"], replayed=True)
        try:
            try:
                resp = current_app.make_response(view(*a, **kw))
            except (ApiError, AppError) as e:
                from .errors import error
                resp = current_app.make_response(error(e.message, e.status, getattr(e, "errors", None)))
        except BaseException:
            _forget(client, rkey)
            raise
        if resp.status_code >= 500:
            _forget(client, rkey)
            return resp
        try:
            client.set(rkey, json.dumps({"fp": fp, "state": "done", "status": resp.status_code,
                                         "body": resp.get_data(as_text=True)}), ex=TTL)
        except redis.RedisError:
            log.warning("could not store the answer for an idempotency key")
        return resp
    return inner


def _forget(client, rkey):
    try:
        client.delete(rkey)
    except redis.RedisError:
        pass
