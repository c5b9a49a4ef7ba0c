"""Security wiring in one place, installed by `create_app` (init_app):

- session generations: every session cookie carries the user's `session_generation`; logout,
  a password change, `flask --app wsgi logout-user EMAIL` or deactivating a user call
  `end_sessions(user)`, and every earlier cookie stops working at once (web, API, websockets).
- throttling (Flask-Limiter on the app's Redis, so limits hold across web processes): failed
  logins per (account email, client address) and per client address, shared by the login form
  and `POST /api/v1/auth/token`; failures for one email across all addresses only slow that
  email's attempts down (LOGIN_SLOWDOWN_*), never refuse them, so nobody can lock a user out
  from elsewhere (OWASP); a general limit per API caller (the parsed bearer token, else session
  user, else address) with X-RateLimit-* headers; 429 with Retry-After. Redis down: each
  process keeps counting in memory until Redis answers again (limits loosen per process,
  never vanish).
- the client address: the socket peer, or when that peer is in TRUSTED_PROXIES (a list of
  networks, shared with the request-id logging) the first X-Forwarded-For hop, from the right,
  that is not a trusted proxy; a header a client sends itself is never believed.
- hosts: with PUBLIC_URL set, a Host header outside TRUSTED_HOSTS is answered 400 before any
  other hook (links never come from the Host header: webapp/links.py).
- headers on every response: CSP (no inline script or style anywhere), frame-ancestors 'none'
  and X-Frame-Options, nosniff, Referrer-Policy; HSTS and Secure cookies with SECURE_COOKIES=1;
  `WWW-Authenticate: Bearer` on every API 401.
"""
import functools
import hashlib
import logging
import time

from flask import after_this_request, current_app, request, session
from flask_limiter import Limiter, RateLimitExceeded
from sqlalchemy import update

from .extensions import db, login_manager

log = logging.getLogger(__name__)


# -- private files ---------------------------------------------------------------------------------
PRIVATE_FILES = ("automation.db", "automation.db-wal", "automation.db-shm", "secret_key", "redis.url")


def make_private(instance_path):
    """Everything this process creates is for its own user only (umask 077: files 0600,
    folders 0700): the SQLite DB holds every tenant's data and password hashes, the logs and
    media are tenants' content. An install made before this is tightened at start."""
    import os
    os.umask(0o077)
    os.makedirs(instance_path, mode=0o700, exist_ok=True)
    try:
        os.chmod(instance_path, 0o700)
        for name in PRIVATE_FILES:
            path = os.path.join(instance_path, name)
            if os.path.exists(path):
                os.chmod(path, 0o600)
    except PermissionError:  # not ours (a shared, pre-made folder): leave it as the owner set it
        log.warning("cannot tighten permissions under %s", instance_path)


# -- session generations --------------------------------------------------------------------------
def _parse_session_id(value):
    """`"<user id>:<generation>"` → (id, generation), or None for anything else (older
    cookies without a generation included: they must log in again)."""
    if not isinstance(value, str):
        return None
    uid, sep, gen = value.partition(":")
    if not sep or not (uid.isascii() and uid.isdigit() and gen.isascii() and gen.isdigit()):
        return None
    if len(uid) > 10 or len(gen) > 10:
        return None
    return int(uid), int(gen)


def load_session_user(value):
    """The active user a session cookie's id names, if its generation is still current; else
    None. Flask-Login's user loader; websockets call it again (through `session_user()`) to
    notice a logout while they are open."""
    from .models import User
    parsed = _parse_session_id(value)
    if parsed is None:
        return None
    uid, gen = parsed
    user = db.session.get(User, uid)
    if user is None or not user.active or (user.session_generation or 0) != gen:
        return None
    return user


def session_user():
    """Re-read the current request's session user from the database (no cache): None once
    the user logged out elsewhere, was logged out by an operator or deactivated."""
    from .models import User
    parsed = _parse_session_id(session.get("_user_id"))
    if parsed is None:
        return None
    db.session.expire_all()  # a long-lived websocket must see other processes' commits
    user = db.session.get(User, parsed[0])
    if user is None or not user.active or (user.session_generation or 0) != parsed[1]:
        return None
    return user


def end_sessions(user, commit=True):
    """End every session of `user` (all browsers, all web processes): one atomic increment,
    so two concurrent calls both count. API tokens are not touched (revoke those separately)."""
    from .models import User
    db.session.execute(update(User).where(User.id == user.id)
                       .values(session_generation=User.session_generation + 1))
    if commit:
        db.session.commit()
    db.session.expire(user, ["session_generation"])
    log.info("ended all sessions of user %s", user.id)


# -- client address and throttling ----------------------------------------------------------------
def _ip(value):
    import ipaddress
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


def client_address():
    """The caller's address for throttling. The TCP peer, unless the peer is one of
    TRUSTED_PROXIES: then X-Forwarded-For is read from the right (each proxy appends the address
    it saw) and the first hop that is not a trusted proxy is the client. Whatever a client
    writes into the header itself sits left of that hop and is never used."""
    peer = request.remote_addr or ""
    trusted = current_app.config.get("TRUSTED_PROXIES") or ()
    ip = _ip(peer)
    if ip is None or not any(ip in net for net in trusted):
        return peer or "unknown"
    hops = ",".join(request.headers.getlist("X-Forwarded-For")).split(",")
    for hop in reversed([h for h in hops if h.strip()]):
        hop_ip = _ip(hop)
        if hop_ip is None:
            break  # a trusted proxy never writes this: stop at the last address we can trust
        if not any(hop_ip in net for net in trusted):
            return str(hop_ip)
    return peer


def throttle_address():
    """The client address as the limits count it: an IPv6 client by its /64, the block one
    subscriber gets (anyone holding one has 2^64 addresses to rotate through), IPv4 as is."""
    addr = client_address()
    ip = _ip(addr)
    if ip is not None and ip.version == 6 and not ip.ipv4_mapped:
        import ipaddress
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    if ip is not None and ip.version == 6:
        return str(ip.ipv4_mapped)
    return addr


def _login_email():
    """The email a login attempt names, normalised (case, spaces) as the user lookup does."""
    if request.is_json:
        data = request.get_json(silent=True)
        email = data.get("email") if isinstance(data, dict) else None
    else:
        email = request.form.get("email")
    return email.strip().lower()[:255] if isinstance(email, str) else ""


def _email_hash():
    # Hashed: no email addresses in Redis.
    return hashlib.sha256(_login_email().encode("utf-8", "replace")).hexdigest()[:32]


def _login_email_key():
    """Failed logins per (account email, client address): an attacker's failures for a victim's
    email count against the attacker's address only; the victim elsewhere is not refused."""
    return "email:" + _email_hash() + "|ip:" + throttle_address()


def _login_ip_key():
    return "ip:" + throttle_address()


def api_caller_key():
    """One bucket per API token (the parsed token, hashed: `bearer T`, `BEARER T` and
    `Bearer  T` are one caller), else per session user, else per address. A header that is no
    bearer credential at all is counted per address, so varying garbage buys no new bucket."""
    header = request.headers.get("Authorization") or ""
    if header:
        raw = parse_bearer(header)  # defined below (auth.tokens re-exports it)
        if raw is None:
            return "badauth:" + throttle_address()
        return "tok:" + hashlib.sha256(raw.encode("utf-8", "replace")).hexdigest()[:32]
    uid = session.get("_user_id")
    if isinstance(uid, str) and uid:
        return "user:" + uid.partition(":")[0]
    return "ip:" + throttle_address()


def _failed_login(response):
    # Only failures count: a user who types the password right is never slowed down.
    return response.status_code == 401


limiter = Limiter(key_func=throttle_address, key_prefix="automation")
SLOWDOWN_SCOPE = "login-email-all"


def _email_ceiling():
    from limits import parse
    return parse(current_app.config["LOGIN_SLOWDOWN_EMAIL"])


def _slow_down_busy_emails(fn):
    """The per-email ceiling across addresses. A hard per-email limit would let anyone lock
    any user out (fail 10 times from anywhere, the right password waits 15 minutes); refusing
    per (email, address) alone would let a botnet guess one email from many addresses at full
    speed. So beyond LOGIN_SLOWDOWN_EMAIL failures for an email (all addresses together), each
    attempt on it waits LOGIN_SLOWDOWN_SECONDS before the password is checked: a guessing
    client loses its speed, the right password from any address still gets in. The wait is a
    sleep of this request's greenlet (gunicorn's gevent worker), not of the process."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if request.method != "POST":
            return fn(*args, **kwargs)
        ident = _email_hash()
        try:
            busy = not limiter.limiter.test(_email_ceiling(), limiter._key_prefix, SLOWDOWN_SCOPE, ident)
        except Exception:  # storage away: no slow-down rather than a failed login page
            busy = False
        if busy:
            delay = current_app.config["LOGIN_SLOWDOWN_SECONDS"]
            log.warning("sign-in attempts for one email are slowed down by %.1f s (over %s failures)",
                        delay, current_app.config["LOGIN_SLOWDOWN_EMAIL"])
            time.sleep(delay)

        @after_this_request
        def _count(response):  # also sees a 401 raised as an error (the API's ApiError)
            if _failed_login(response):
                try:
                    limiter.limiter.hit(_email_ceiling(), limiter._key_prefix, SLOWDOWN_SCOPE, ident)
                except Exception:
                    log.warning("login slow-down counter not updated (rate-limit storage unavailable)")
            return response
        return fn(*args, **kwargs)
    return wrapper


def login_throttle(fn):
    """Decorator for every route that checks a password (the form and the token route share
    the same counters). The limits refuse (429) only the address that failed; the email's
    ceiling across addresses slows down and never refuses."""
    fn = _slow_down_busy_emails(fn)
    fn = limiter.shared_limit(lambda: current_app.config["LOGIN_RATE_LIMIT_EMAIL"], scope="login-email",
                              key_func=_login_email_key, deduct_when=_failed_login)(fn)
    fn = limiter.shared_limit(lambda: current_app.config["LOGIN_RATE_LIMIT_IP"], scope="login-ip",
                              key_func=_login_ip_key, deduct_when=_failed_login)(fn)
    return fn


def retry_after_seconds(e):
    try:
        window = limiter.limiter.get_window_stats(e.limit.limit, *_breached_args(e))
        return max(1, int(window.reset_time - time.time()) + 1)
    except Exception:  # storage away: the limit's own period is a safe upper bound
        return int(e.limit.limit.get_expiry())


def _breached_args(e):
    for req_limit in limiter.current_limits:
        if req_limit.breached:
            return req_limit.request_args
    return []


def _on_rate_limited(e):
    """429: JSON envelope on the API, the login page with a readable message on the form."""
    from flask import jsonify, render_template
    seconds = retry_after_seconds(e)
    is_login = request.endpoint in ("auth.login", "api.issue_token", "api.issue_token_slash")
    if is_login:
        msg = f"Too many failed sign-in attempts. Try again in {seconds} seconds."
    else:
        msg = f"Rate limit exceeded ({e.description}). Try again in {seconds} seconds."
    if request.path.startswith("/api/"):
        resp = jsonify({"success": False, "error": msg})
    elif request.endpoint in _throttled_pages:
        resp = current_app.make_response(_throttled_pages[request.endpoint](msg))
    else:
        resp = current_app.make_response(render_template("error.html", code=429, message=msg))
    resp.status_code = 429
    resp.headers["Retry-After"] = str(seconds)
    return resp


# The pages a 429 may show instead of the generic one, by endpoint: registered by the room
# that owns the page (the login form: webapp/auth), so this floor never imports a view.
_throttled_pages = {}


def throttled_page(endpoint, render):
    """On a 429 at `endpoint`, answer with `render(message)` (the page again, with the message)."""
    _throttled_pages[endpoint] = render


def limit_api(bp):
    """The general per-caller limit (API_RATE_LIMIT) on the API blueprint: called by webapp/api."""
    if getattr(limit_api, "done", False):
        return
    limit_api.done = True  # limits attach to the (module-level) blueprint once
    limiter.limit(lambda: current_app.config["API_RATE_LIMIT"], key_func=api_caller_key)(bp)


# -- bearer credentials (API tokens, STATUS_TOKEN) ----------------------------------------------------
def parse_bearer(header):
    """The token of an `Authorization: Bearer <token>` header (scheme in any case, RFC 7235),
    or None when the header is not a well-formed bearer credential."""
    scheme, _sep, raw = (header or "").strip().partition(" ")
    raw = raw.strip()
    if scheme.lower() != "bearer" or not raw or " " in raw or len(raw) > 200:
        return None
    return raw


# -- /status details --------------------------------------------------------------------------------
def status_details_allowed():
    """Worker names and pids are for a logged-in user or an operator holding STATUS_TOKEN."""
    import hmac
    from flask_login import current_user
    expected = current_app.config.get("STATUS_TOKEN")
    header = request.headers.get("Authorization")
    if expected and header:
        given = parse_bearer(header) or ""
        if hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8", "replace")):
            return True
    return bool(current_user.is_authenticated)


# -- response headers ------------------------------------------------------------------------------
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
       "frame-ancestors 'none'")


def _security_headers(response):
    h = response.headers
    h.setdefault("Content-Security-Policy", CSP)
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("Referrer-Policy", "same-origin")
    h.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    if current_app.config.get("SECURE_COOKIES"):
        h.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
    if response.status_code not in (429, 503):
        # Flask-Limiter adds Retry-After to every limited response; it only means something here.
        h.pop("Retry-After", None)
    if response.status_code == 401 and request.path.startswith("/api/") and "WWW-Authenticate" not in h:
        h["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


def _refuse_untrusted_host():
    """A Host outside TRUSTED_HOSTS (derived from PUBLIC_URL): 400 before anything else runs.
    Flask leaves such a request without a URL adapter, so any hook or page that builds a URL
    would fail with a 500 instead."""
    from werkzeug.exceptions import SecurityError
    if isinstance(request.routing_exception, SecurityError):
        return current_app.response_class("400 Bad Request: unknown host (not in TRUSTED_HOSTS)\n", status=400,
                                          mimetype="text/plain")
    return None


def init_app(app):
    login_manager.user_loader(load_session_user)
    app.before_request_funcs.setdefault(None, []).insert(0, _refuse_untrusted_host)

    # Registered before Flask-Limiter's own hook so that it runs after it (Flask runs
    # after_request functions in reverse order).
    app.after_request(_security_headers)
    from .redis_conn import open_redis_warning, resolve_url
    warning = open_redis_warning(app.config.get("REDIS_URL"))
    if warning:
        log.warning(warning)
    app.config.setdefault("RATELIMIT_STORAGE_URI", resolve_url(app) or "memory://")
    app.config.setdefault("RATELIMIT_HEADERS_ENABLED", True)
    # Measured per API request: 2 Redis round trips and O(1) memory per key (moving-window:
    # also 2 round trips, but a sorted set entry per request in the window, ~34 commands).
    app.config.setdefault("RATELIMIT_STRATEGY", "sliding-window-counter")
    # Redis down: count in this process's memory instead of failing every request.
    app.config.setdefault("RATELIMIT_IN_MEMORY_FALLBACK_ENABLED", True)
    app.config.setdefault("RATELIMIT_SWALLOW_ERRORS", True)
    limiter.init_app(app)
    # One module-level limiter serves every app this process builds (tests build many): an
    # earlier app's unreachable storage must not leave this one on the in-memory fallback.
    limiter._storage_dead = False
    app.register_error_handler(RateLimitExceeded, _on_rate_limited)
