"""The object store interface: flat keys (`logs/<account>/<site>/<run>/…`, `media/<account>/<site>/<image>.png`)
built from integer ids only, bytes in and out. Two backends: a local folder (local.py, the default)
and an S3-compatible bucket (s3.py). Nothing here knows about runs or tenants: the callers build
keys from ids they loaded with the caller's account (webapp/storage/keys.py)."""
import re

_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]+$")


class StoreError(Exception):
    """The store could not be reached or refused an operation (the message says which)."""


def check_key(key):
    """Keys are built by keys.py from ids; this refuses anything else (an absolute path, `..`,
    an empty part) so that no caller mistake can reach outside the store's root."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") or not _SEGMENT.match(p) for p in parts):
        raise ValueError(f"invalid storage key {key!r}")
    return key


class Store:
    kind = "abstract"

    def put(self, key, data, content_type="application/octet-stream"):
        """Write the whole object at once (atomically: a reader sees the old or the new one)."""
        raise NotImplementedError

    def get(self, key):
        """The object's bytes, or None when it does not exist."""
        raise NotImplementedError

    def list(self, prefix, start_after=None):
        """Sorted keys under `prefix` (which ends with "/"), after `start_after` if given."""
        raise NotImplementedError

    def delete(self, keys):
        """Delete these objects (missing ones are fine)."""
        raise NotImplementedError

    def delete_prefix(self, prefix, dry_run=False):
        """Delete every object under `prefix`; returns (objects, bytes) deleted (or that would be)."""
        raise NotImplementedError

    def response(self, key, mimetype, max_age=0, download_name=None):
        """A Flask response serving the object (streamed), or None when it does not exist."""
        raise NotImplementedError
