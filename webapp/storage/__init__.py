"""Object storage for run logs and generated images (one room: base.py the interface, local.py
a folder, s3.py an S3-compatible bucket, logs.py run logs on top of either, keys.py the key
layout). `get_store()` gives the app's store, chosen by STORAGE_URL:

- unset: the local folders LOG_DIR and MEDIA_DIR, exactly as before (one machine, no service);
- `file:///path`: one local (or shared) folder, `logs/` and `media/` under it;
- `s3://bucket/prefix`: a bucket (S3_ENDPOINT_URL for MinIO, R2, …; AWS_* credentials).
"""
from urllib.parse import urlparse

from flask import current_app

from .base import Store, StoreError, check_key  # noqa: F401  (the room's public names)
from .local import LocalStore
from .s3 import S3Store


def parse_storage_url(url):
    """(kind, location) or ValueError naming what is wrong: for config checks and the CLI."""
    if not url:
        return "file", None
    u = urlparse(url)
    if u.scheme == "file":
        if not u.path or not u.path.startswith("/") or u.netloc not in ("", "localhost"):
            raise ValueError(f"STORAGE_URL {url!r}: a file URL needs an absolute path, e.g. file:///var/lib/automation")
        return "file", u.path
    if u.scheme == "s3":
        if not u.netloc:
            raise ValueError(f"STORAGE_URL {url!r}: an s3 URL needs a bucket, e.g. s3://my-bucket/automation")
        return "s3", (u.netloc, u.path.strip("/"))
    raise ValueError(f"STORAGE_URL {url!r}: the scheme must be file:// or s3://")


def make_store(config):
    kind, where = parse_storage_url(config.get("STORAGE_URL"))
    if kind == "s3":
        bucket, prefix = where
        return S3Store(bucket, prefix, config.get("S3_ENDPOINT_URL"))
    if where is None:
        return LocalStore(config["LOG_DIR"], {"logs": lambda: config["LOG_DIR"], "media": lambda: config["MEDIA_DIR"]})
    return LocalStore(where)


def get_store(app=None):
    app = app or current_app._get_current_object()
    store = app.extensions.get("storage")
    if store is None:
        store = app.extensions.setdefault("storage", make_store(app.config))
    return store
