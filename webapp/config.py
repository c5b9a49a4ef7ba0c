"""Configuration: parsed from the environment in one place, when the app is created.

Nothing here runs at import time; `load_config(instance_path)` is called by
`create_app` (and by `worker.py`) so tests can build apps with their own settings.
"""
import os
import secrets
from pathlib import Path


def _int(env, name, default):
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"config error: {name} must be an integer, got {raw!r}")


def _bool(env, name, default=False):
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"config error: {name} must be 0 or 1, got {raw!r}")


def _rate(env, name, default):
    """A Flask-Limiter rate string ("10 per 15 minutes", "1200/minute"), checked at start."""
    raw = (env.get(name) or "").strip() or default
    from limits import parse_many
    try:
        parse_many(raw)
    except ValueError:
        raise SystemExit(f"config error: {name} must be a rate such as '10 per 15 minutes', got {raw!r}")
    return raw


def _float(env, name, default):
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"config error: {name} must be a number, got {raw!r}")


def _flag(env, name):
    return (env.get(name) or "0").strip().lower() in ("1", "true", "yes", "on")


def _positive_or_none(env, name):
    value = _int(env, name, None)
    if value is not None and value < 1:
        raise SystemExit(f"config error: {name} must be an integer >= 1 (or unset), got {value}")
    return value


def _storage_url(env):
    from .storage import parse_storage_url
    url = env.get("STORAGE_URL") or None
    try:
        parse_storage_url(url)
    except ValueError as e:
        raise SystemExit(f"config error: {e}")
    return url


def _ws_cap(env):
    cap = _int(env, "WS_MAX_PER_USER", 20)
    if cap < 1:
        raise SystemExit(f"config error: WS_MAX_PER_USER must be at least 1, got {cap}")
    return cap


def _origins(env):
    """ALLOWED_ORIGINS: comma-separated `scheme://host[:port]` values."""
    out = []
    for raw in (env.get("ALLOWED_ORIGINS") or "").split(","):
        value = raw.strip().rstrip("/").lower()
        if not value:
            continue
        if not (value.startswith("http://") or value.startswith("https://")) or "/" in value.split("://", 1)[1]:
            raise SystemExit(f"config error: ALLOWED_ORIGINS entries must look like https://host[:port], got {raw.strip()!r}")
        out.append(value)
    return out


def _smtp_url(env):
    url = env.get("SMTP_URL") or None
    if url and url.split("://", 1)[0] not in ("smtp", "smtps", "smtp+starttls"):
        raise SystemExit(f"config error: SMTP_URL must start with smtp://, smtp+starttls:// or smtps://, got {url.split('://', 1)[0]!r}")
    return url


def _public_url(env):
    """PUBLIC_URL: the address users reach the console at (`https://console.example.com`), the
    base of every link in mail and invitations. Unset: `make run`'s own address."""
    from urllib.parse import urlsplit
    raw = (env.get("PUBLIC_URL") or "").strip()
    if not raw:
        return f"http://localhost:{(env.get('PORT') or '5000').strip()}", False
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query \
            or parts.fragment or parts.username or parts.password:
        raise SystemExit(f"config error: PUBLIC_URL must look like https://host[:port][/path], got {raw!r}")
    return raw.rstrip("/"), True


def _trusted_hosts(env, public_url, public_url_set):
    """Host headers the app answers (Flask's TRUSTED_HOSTS; others get 400): TRUSTED_HOSTS if
    set (comma-separated; `.example.com` also matches its subdomains), else PUBLIC_URL's host
    plus this machine's own names (health checks, a proxy on the machine). None = any host,
    when PUBLIC_URL is unset (development)."""
    from urllib.parse import urlsplit
    raw = env.get("TRUSTED_HOSTS")
    if raw is not None and raw.strip():
        hosts = [h.strip().lower() for h in raw.split(",") if h.strip()]
        for h in hosts:
            if "/" in h or " " in h:
                raise SystemExit(f"config error: TRUSTED_HOSTS entries are host names, got {h!r}")
        return hosts
    if not public_url_set:
        return None
    return [urlsplit(public_url).hostname, "localhost", "127.0.0.1"]


def persistent_secret_key(instance_path):
    """SECRET_KEY unset: generate one once and keep it under instance/ (mode 0600)
    so sessions survive restarts and every process of one install shares it."""
    path = Path(instance_path) / "secret_key"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    # O_EXCL: two processes starting together agree on the first writer's key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key


def log_format(env=None):
    """LOG_FORMAT: `text` (default) or `json` (one JSON object per line). A function of its own
    because gunicorn's logger class needs it before any app exists."""
    env = os.environ if env is None else env
    value = (env.get("LOG_FORMAT") or "text").strip().lower()
    if value not in ("text", "json"):
        raise SystemExit(f"config error: LOG_FORMAT must be 'text' or 'json', got {env.get('LOG_FORMAT')!r}")
    return value


def metrics_dir(env=None):
    """prometheus_client's own PROMETHEUS_MULTIPROC_DIR (it reads it at import; so do we, for
    the scrape and the start-up wipe). Unset = single-process mode."""
    env = os.environ if env is None else env
    return env.get("PROMETHEUS_MULTIPROC_DIR") or None


def _networks(env, name, default):
    import ipaddress
    raw = env.get(name, default)
    out = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise SystemExit(f"config error: {name} must be a comma-separated list of IPs or CIDRs, got {part!r}")
    return tuple(out)


def load_config(instance_path, env=None):
    env = os.environ if env is None else env
    instance_path = Path(instance_path)
    db_url = env.get("DATABASE_URL") or f"sqlite:///{instance_path / 'automation.db'}"
    if db_url.startswith("postgres://"):  # Heroku-style URLs
        db_url = "postgresql://" + db_url[len("postgres://"):]
    secure = _bool(env, "SECURE_COOKIES")
    public_url, public_url_set = _public_url(env)
    return {
        "SECRET_KEY": env.get("SECRET_KEY") or persistent_secret_key(instance_path),
        "SQLALCHEMY_DATABASE_URI": db_url,
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
        # None means "embedded": see webapp/redis_conn.py.
        "REDIS_URL": env.get("REDIS_URL") or None,
        "LOG_DIR": env.get("LOG_DIR") or str(instance_path / "logs"),
        "MEDIA_DIR": env.get("MEDIA_DIR") or str(instance_path / "media"),
        # Run logs and images (webapp/storage/): unset = LOG_DIR and MEDIA_DIR as they are.
        "STORAGE_URL": _storage_url(env),
        "S3_ENDPOINT_URL": env.get("S3_ENDPOINT_URL") or None,
        # Days after a run ends before its log and images are deleted (None = keep them).
        "RETENTION_DAYS": _positive_or_none(env, "RETENTION_DAYS"),
        "AI_PROVIDER": env.get("AI_PROVIDER", "local"),
        "AI_LOCAL_LATENCY_MS": _int(env, "AI_LOCAL_LATENCY_MS", 0),
        "AI_ARTICLE_WORDS": _int(env, "AI_ARTICLE_WORDS", 600),
        # Demo/test setting: the local provider fails every Nth call as an item error.
        "AI_LOCAL_FAIL_EVERY": _positive_or_none(env, "AI_LOCAL_FAIL_EVERY"),
        "OPENAI_BASE_URL": env.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
        "OPENAI_API_KEY": env.get("OPENAI_API_KEY", ""),
        "OPENAI_CHAT_MODEL": env.get("OPENAI_CHAT_MODEL", "gpt-4o-mini"),
        "OPENAI_IMAGE_MODEL": env.get("OPENAI_IMAGE_MODEL", "dall-e-3"),
        "OPENAI_TIMEOUT": _int(env, "OPENAI_TIMEOUT", 60),
        # Requests per minute to the AI provider across all workers (None = no cap), and how
        # long a provider may keep answering 429 before the run pauses.
        "AI_MAX_RPM": _int(env, "AI_MAX_RPM", None),
        "AI_RATE_LIMIT_PAUSE_AFTER": _int(env, "AI_RATE_LIMIT_PAUSE_AFTER", 600),
        "AI_ADAPTIVE_CONCURRENCY": _int(env, "AI_ADAPTIVE_CONCURRENCY", 1),
        # A running job heartbeats every min(5, STALE_RUN_SECONDS / 4) s on its own thread;
        # a run without one for STALE_RUN_SECONDS is continued by the stale check, which runs
        # every STALE_CHECK_INTERVAL s: a killed worker's run goes on within ~35 s by default.
        "STALE_RUN_SECONDS": _int(env, "STALE_RUN_SECONDS", 20),
        "STALE_CHECK_INTERVAL": _int(env, "STALE_CHECK_INTERVAL", 10),
        "MAX_RECOVERY_ATTEMPTS": _int(env, "MAX_RECOVERY_ATTEMPTS", 3),
        "ITEM_MAX_ATTEMPTS": _int(env, "ITEM_MAX_ATTEMPTS", 3),
        # How long one job goes on with the next batches of its stage (when the site has no
        # delay between batches) before it queues the next job: runs sharing a worker take
        # turns at this granularity. 0 = one batch per job.
        "JOB_SLICE_SECONDS": _float(env, "JOB_SLICE_SECONDS", 10.0),
        "RQ_QUEUE": env.get("RQ_QUEUE", "automation"),
        # Account limits of a shared service; `set-account-limits` overrides them per account.
        # Runs started beyond ACCOUNT_MAX_ACTIVE_RUNS wait as `queued` (None = no limit).
        "ACCOUNT_MAX_ACTIVE_RUNS": _positive_or_none(env, "ACCOUNT_MAX_ACTIVE_RUNS"),
        "MAX_KEYWORDS_PER_SITE": _int(env, "MAX_KEYWORDS_PER_SITE", 100000),
        # Other quotas (webapp/quotas.py): 400 naming the limit and the count when reached.
        "MAX_TOKENS_PER_USER": _int(env, "MAX_TOKENS_PER_USER", 50),
        "MAX_WEBHOOKS_PER_SITE": _int(env, "MAX_WEBHOOKS_PER_SITE", 20),
        "MAX_PENDING_INVITATIONS": _int(env, "MAX_PENDING_INVITATIONS", 50),
        # A keyword import of more rows than this runs as a background job (webapp/imports.py);
        # smaller ones answer at once, parsed and inserted in chunks that yield the event loop.
        "IMPORT_SYNC_MAX_ROWS": _int(env, "IMPORT_SYNC_MAX_ROWS", 2000),
        # Websockets (webapp/web/sockets.py): open sockets per user across all web processes,
        # and the origins besides the app's own whose pages may open them.
        "WS_MAX_PER_USER": _ws_cap(env),
        "ALLOWED_ORIGINS": _origins(env),
        # A log socket asking for the lines after N replays at most this many (the last ones),
        # after a marker line pointing at the download.
        "WS_REPLAY_LINES": _int(env, "WS_REPLAY_LINES", 2000),
        # The Redis connection pool of each process (webapp/redis_conn.py): at most this many
        # connections; a caller waits up to REDIS_POOL_TIMEOUT s for a free one, then gets
        # PoolExhausted (a websocket is then refused with 4429, never admitted unchecked).
        "REDIS_MAX_CONNECTIONS": _int(env, "REDIS_MAX_CONNECTIONS", 50),
        "REDIS_POOL_TIMEOUT": _float(env, "REDIS_POOL_TIMEOUT", 5.0),
        # Notifications (webapp/notify/): webhook targets on private networks are refused unless
        # WEBHOOK_ALLOW_PRIVATE=1 (development, tests); failed deliveries are retried after
        # NOTIFY_RETRY_BASE_SECONDS, doubling, for NOTIFY_RETRY_WINDOW_SECONDS.
        "WEBHOOK_ALLOW_PRIVATE": _flag(env, "WEBHOOK_ALLOW_PRIVATE"),
        "WEBHOOK_TIMEOUT": _float(env, "WEBHOOK_TIMEOUT", 10.0),
        "NOTIFY_RETRY_BASE_SECONDS": _float(env, "NOTIFY_RETRY_BASE_SECONDS", 30.0),
        "NOTIFY_RETRY_MAX_DELAY_SECONDS": _float(env, "NOTIFY_RETRY_MAX_DELAY_SECONDS", 3600.0),
        "NOTIFY_RETRY_WINDOW_SECONDS": _float(env, "NOTIFY_RETRY_WINDOW_SECONDS", 24 * 3600.0),
        "SMTP_URL": _smtp_url(env),
        "MAIL_FROM": env.get("MAIL_FROM") or None,
        # Operations (docs/OPERATIONS.md): /metrics is off (404) until a token is set.
        "METRICS_TOKEN": env.get("METRICS_TOKEN") or None,
        "METRICS_DIR": metrics_dir(env),
        "LOG_FORMAT": log_format(env),
        # Peers whose X-Request-ID header is kept (a reverse proxy on this machine by default);
        # from anyone else the header is ignored and a fresh id is made. The same list decides
        # whose X-Forwarded-For is believed for the client address (webapp/security.py).
        "TRUSTED_PROXIES": _networks(env, "TRUSTED_PROXIES", "127.0.0.1,::1"),
        "MAX_CONTENT_LENGTH": _int(env, "MAX_CONTENT_LENGTH", 2 * 1024 * 1024),
        # Keyword imports only (web paste/upload, POST /planner/keywords/bulk/): 50 000 rows as
        # JSON with volume and difficulty are ~4 MB.
        "IMPORT_MAX_BYTES": _int(env, "IMPORT_MAX_BYTES", 8 * 1024 * 1024),
        # Longer URLs / header fields are refused by the app (414 / 431, in the JSON envelope on
        # /api/); gunicorn.conf.py lets through twice these, so the app's answer is the one seen.
        "MAX_URL_LENGTH": _int(env, "MAX_URL_LENGTH", 4096),
        "MAX_HEADER_BYTES": _int(env, "MAX_HEADER_BYTES", 8190),
        "WTF_CSRF_TIME_LIMIT": None,
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        # Behind HTTPS: Secure cookies and HSTS (webapp/security.py).
        "SECURE_COOKIES": secure,
        "SESSION_COOKIE_SECURE": secure,
        "REMEMBER_COOKIE_SECURE": secure,
        "LOGIN_RATE_LIMIT_EMAIL": _rate(env, "LOGIN_RATE_LIMIT_EMAIL", "10 per 15 minutes"),
        "LOGIN_RATE_LIMIT_IP": _rate(env, "LOGIN_RATE_LIMIT_IP", "50 per 15 minutes"),
        # Failed logins for one email from all addresses together beyond which each attempt on
        # that email waits LOGIN_SLOWDOWN_SECONDS (a slow-down, never a refusal: no lock-outs).
        "LOGIN_SLOWDOWN_EMAIL": _rate(env, "LOGIN_SLOWDOWN_EMAIL", "10 per 15 minutes"),
        "LOGIN_SLOWDOWN_SECONDS": _float(env, "LOGIN_SLOWDOWN_SECONDS", 2.0),
        "API_RATE_LIMIT": _rate(env, "API_RATE_LIMIT", "1200 per minute"),
        # Links in mail and invitations are built from PUBLIC_URL, never from the request's
        # Host header (which a client writes); with PUBLIC_URL set, other hosts get 400.
        "PUBLIC_URL": public_url,
        "TRUSTED_HOSTS": _trusted_hosts(env, public_url, public_url_set),
        # Unset: the detailed /status (worker names, pids) is for logged-in users only.
        "STATUS_TOKEN": env.get("STATUS_TOKEN") or None,
    }
