"""Who may hold a websocket, how many, and for how long. Every websocket route goes through
`admitted(ws, kind)`:

1. Origin: a handshake whose `Origin` header is present and is neither this app's own origin
   (same host, http or https) nor listed in ALLOWED_ORIGINS is closed with 4403. Clients that
   send no Origin (API consumers, scripts) are not affected.
2. Authentication: a bearer token header, else the session cookie; neither → 4401.
3. Per-user cap: at most WS_MAX_PER_USER open sockets per user, counted across all web
   processes in Redis; one more is closed with 4429 and a reason (the page then polls).
   The cap fails closed: a Redis that is busy (no free connection in this process's pool
   within REDIS_POOL_TIMEOUT, or a command timing out) also closes the socket with 4429
   ("server busy"), so a burst cannot slip past the count at exactly the moment it matters.
   At most HANDSHAKES handshakes run at once per process, PER_CREDENTIAL of one credential
   (one user's burst waits behind itself, not in front of other accounts' requests).
   Only a Redis that is down (connection refused) admits the socket unchecked (the log tail
   still works from the file): logged, and counted in /metrics as
   automation_websocket_admissions_total{result="unchecked"}.
4. Follows auth: while open, the socket re-runs step 2 every RECHECK_SECONDS — the token
   lookup (revoked, expired, user deactivated) or the session user loader (logged out,
   logged out elsewhere, deactivated) — and closes with 4401 when it fails.

The count is a Redis sorted set per user: member = one socket, score = when its claim
expires. An open socket renews its claim at each recheck; a crashed process stops renewing,
so its sockets stop counting after CLAIM_TTL seconds without anyone cleaning up.

`subscribe(fn)` registers `fn(event, kind)` called with "open"/"close" as sockets come and
go (metrics); `open_sockets()` is this process's count by kind.
"""
import logging
import random
import threading
import time
import uuid
from contextlib import contextmanager
from urllib.parse import urlsplit

import redis
from flask import current_app, request

from .. import metrics
from ..auth.tokens import user_for_bearer
from ..extensions import db
from ..redis_conn import PoolExhausted, get_redis

log = logging.getLogger(__name__)

RECHECK_SECONDS = 5.0   # a revoked token / ended session closes its sockets within this (+ POLL)
# Sockets of one user (up to WS_MAX_PER_USER tabs) share one re-check per this many seconds
# (per process): RECHECK_SECONDS + SHARED_SECONDS stays well within the promised 10 s.
SHARED_SECONDS = 2.0
CLAIM_TTL = 30          # a socket whose process died stops counting after this many seconds

_ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

_listeners = []
_open = {}
_open_lock = threading.Lock()


def subscribe(fn):
    """Register `fn(event, kind)`, event "open" or "close"; errors are logged, never raised."""
    if fn not in _listeners:
        _listeners.append(fn)
    return fn


def open_sockets():
    with _open_lock:
        return dict(_open)


def _changed(event, kind):
    # The one place where a socket is counted as open or closed (for metrics).
    with _open_lock:
        _open[kind] = _open.get(kind, 0) + (1 if event == "open" else -1)
    for fn in list(_listeners):
        try:
            fn(event, kind)
        except Exception:
            log.exception("socket listener %r failed", fn)


def claims_key(user_id):
    return f"automation:ws:claims:{int(user_id)}"


def origin_allowed():
    origin = request.headers.get("Origin")
    if not origin:
        return True
    origin = origin.strip().rstrip("/").lower()
    if origin in current_app.config["ALLOWED_ORIGINS"]:
        return True
    parts = urlsplit(origin)
    # Our own origin: the host the browser connected to. The scheme is not compared so that
    # TLS ended at a proxy (browser on https, app on http) still counts as the same origin.
    return parts.scheme in ("http", "https") and parts.netloc == request.host.lower()


class Caller:
    def __init__(self, user, kind):
        self.user_id, self.account_id, self.kind = user.id, user.account_id, kind


_recent = {}  # credential -> (monotonic time, Caller or None): re-checks shared by a user's sockets
_recent_lock = threading.Lock()


def _credential():
    from flask import session
    header = request.headers.get("Authorization")
    return ("token", header) if header else ("session", session.get("_user_id"))


def recheck():
    """authenticate(), shared for SHARED_SECONDS between the sockets of one credential."""
    key, now = _credential(), time.monotonic()
    with _recent_lock:
        hit = _recent.get(key)
    if hit and now - hit[0] < SHARED_SECONDS:
        return hit[1]
    caller = authenticate()
    with _recent_lock:
        if len(_recent) > 10_000:  # bounded: old entries are useless anyway
            _recent.clear()
        _recent[key] = (time.monotonic(), caller)
    return caller


def authenticate():
    """The caller of this websocket request, read afresh from the database, or None."""
    try:
        header = request.headers.get("Authorization")
        if header:
            user, _tok = user_for_bearer(header)
            return Caller(user, "token") if user else None
        from ..security import session_user
        user = session_user()
        return Caller(user, "session") if user else None
    finally:
        db.session.remove()  # never hold a database connection for the life of a socket


class Connection:
    """An admitted socket: its caller, its claim on the user's cap, its periodic recheck."""

    def __init__(self, ws, kind, caller):
        self.ws, self.kind, self.caller = ws, kind, caller
        self.claim = uuid.uuid4().hex
        self.next_check = time.monotonic() + RECHECK_SECONDS * random.random()  # spread out
        self.next_renew = time.monotonic() + CLAIM_TTL / 3

    def admit(self):
        """"admitted", "over_cap", "busy" (refused: Redis could not answer in time) or
        "unchecked" (admitted: Redis is down)."""
        cap = current_app.config["WS_MAX_PER_USER"]
        now = time.time()
        try:
            ok = get_redis().eval(_ADMIT, 1, claims_key(self.caller.user_id), now, now + CLAIM_TTL, self.claim,
                                  cap, CLAIM_TTL * 2)
        except (PoolExhausted, redis.TimeoutError) as e:
            # Busy, not down: fail closed (the cap exists for exactly this moment, a burst).
            log.warning("websocket refused: cap not checkable (Redis busy: %s)", e.__class__.__name__)
            return "busy"
        except redis.RedisError as e:
            # Redis down: the log tail still works from the file; do not lock everyone out.
            log.warning("websocket cap not checked (Redis down: %s)", e.__class__.__name__)
            return "unchecked"
        return "admitted" if ok else "over_cap"

    def renew(self):
        try:
            r = get_redis()
            pipe = r.pipeline(transaction=False)
            pipe.zadd(claims_key(self.caller.user_id), {self.claim: time.time() + CLAIM_TTL})
            pipe.expire(claims_key(self.caller.user_id), CLAIM_TTL * 2)
            pipe.execute()
        except redis.RedisError:
            pass

    def release(self):
        try:
            get_redis().zrem(claims_key(self.caller.user_id), self.claim)
        except redis.RedisError:
            pass  # the claim expires by itself

    def seconds_to_check(self):
        """How long the socket may sleep before its next re-check is due (so that a revoked
        token closes within SHARED_SECONDS + RECHECK_SECONDS, whatever else wakes it)."""
        return max(0.05, self.next_check - time.monotonic())

    def still_allowed(self):
        """False once the token or session behind this socket is gone (checked every
        RECHECK_SECONDS; cheap in between)."""
        if time.monotonic() < self.next_check:
            return True
        self.next_check = time.monotonic() + RECHECK_SECONDS
        caller = recheck()
        if caller is None or caller.user_id != self.caller.user_id:
            return False
        if time.monotonic() >= self.next_renew:
            self.next_renew = time.monotonic() + CLAIM_TTL / 3
            self.renew()
        return True

    def close_for_auth(self):
        reason = "token revoked" if self.caller.kind == "token" else "logged out"
        self.ws.close(4401, reason)


# Handshakes in progress in this process (each holds a database connection to authenticate,
# then Redis to count): at most HANDSHAKES at once, and PER_CREDENTIAL of one credential, so
# that one user opening hundreds of sockets at once waits behind its own handshakes instead of
# taking the whole database pool from other accounts' requests. A handshake that cannot get
# its turn within HANDSHAKE_WAIT seconds is refused as busy (4429: the page polls).
HANDSHAKES = 6
PER_CREDENTIAL = 2
HANDSHAKE_WAIT = 30.0  # long enough for a whole process's sockets reconnecting after a restart
_handshakes = threading.BoundedSemaphore(HANDSHAKES)
_per_credential = {}  # credential -> [semaphore, users]
_per_credential_lock = threading.Lock()
_held = {}  # credential -> sockets this process admitted for it and still holds


@contextmanager
def handshake_turn():
    key = _credential()
    with _per_credential_lock:
        entry = _per_credential.setdefault(key, [threading.BoundedSemaphore(PER_CREDENTIAL), 0])
        entry[1] += 1
    deadline = time.monotonic() + HANDSHAKE_WAIT
    got_own = got_all = False
    try:
        got_own = entry[0].acquire(timeout=HANDSHAKE_WAIT)
        got_all = got_own and _handshakes.acquire(timeout=max(0.0, deadline - time.monotonic()))
        yield got_own and got_all
    finally:
        if got_all:
            _handshakes.release()
        if got_own:
            entry[0].release()
        with _per_credential_lock:
            entry[1] -= 1
            if entry[1] == 0 and _per_credential.get(key) is entry:
                del _per_credential[key]  # bounded: only credentials with a handshake in progress


@contextmanager
def admitted(ws, kind):
    """Yield a Connection for an allowed socket, or None after closing it with the reason."""
    if not origin_allowed():
        ws.close(4403, "origin not allowed")
        yield None
        return
    key = _credential()
    if _held.get(key, 0) >= current_app.config["WS_MAX_PER_USER"]:
        # This process alone already holds the cap for this credential: refused without a
        # database or Redis call (a burst's excess is cheap to turn away).
        metrics.websocket_admission("over_cap")
        ws.close(4429, f"Too many live connections (at most {current_app.config['WS_MAX_PER_USER']} per user)")
        yield None
        return
    with handshake_turn() as turn:
        if not turn:
            metrics.websocket_admission("busy")
            ws.close(4429, "Server busy: live updates unavailable for now")
            yield None
            return
        caller = authenticate()
        if caller is None:
            ws.close(4401, "not logged in")
            yield None
            return
        conn = Connection(ws, kind, caller)
        result = conn.admit()
    metrics.websocket_admission(result)
    if result in ("over_cap", "busy"):
        cap = current_app.config["WS_MAX_PER_USER"]
        ws.close(4429, f"Too many live connections (at most {cap} per user)" if result == "over_cap"
                 else "Server busy: live updates unavailable for now")
        yield None
        return
    _changed("open", kind)
    with _per_credential_lock:
        _held[key] = _held.get(key, 0) + 1
    try:
        yield conn
    finally:
        with _per_credential_lock:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]
        conn.release()
        _changed("close", kind)
