"""The local-folder backend: one file per object. The default (STORAGE_URL unset) keeps today's
layout exactly: keys under `logs/` live in LOG_DIR and keys under `media/` in MEDIA_DIR, so
`make run` and a single machine see the same files as before."""
import os
import shutil
import tempfile
from pathlib import Path

from flask import send_file

from .base import Store, check_key


class LocalStore(Store):
    kind = "file"

    def __init__(self, root, dirs=None):
        self.root = Path(root)
        # First part of a key -> config name of its folder (LOG_DIR / MEDIA_DIR by default),
        # read from the app's config at each use; other keys live under root.
        self.dirs = dirs or {}
        self.ident = f"file://{self.root}"

    def path(self, key):
        check_key(key)
        top, _, rest = key.partition("/")
        if top in self.dirs:
            base = Path(self.dirs[top]())
            return base / rest if rest else base
        return self.root / key

    def put(self, key, data, content_type="application/octet-stream"):
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader sees the old file or the new one, never half of it.
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, dest)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def get(self, key):
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def list(self, prefix, start_after=None):
        base = self.path(prefix.rstrip("/"))
        out = []
        if not base.is_dir():
            return out
        for dirpath, _dirs, files in os.walk(base):
            rel = Path(dirpath).relative_to(base)
            for name in files:
                if name.startswith(".") and name.endswith(".tmp"):
                    continue  # a put in progress
                key = prefix + (str(rel / name) if str(rel) != "." else name)
                if start_after is None or key > start_after:
                    out.append(key)
        return sorted(out)

    def delete(self, keys):
        for key in keys:
            try:
                self.path(key).unlink()
            except FileNotFoundError:
                pass

    def delete_prefix(self, prefix, dry_run=False):
        base = self.path(prefix.rstrip("/"))
        count = size = 0
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                count += 1
                try:
                    size += os.stat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:
                    pass
        if not dry_run:
            shutil.rmtree(base, ignore_errors=True)
        return count, size

    def response(self, key, mimetype, max_age=0, download_name=None):
        path = self.path(key)
        if not path.is_file():
            return None
        return send_file(path, mimetype=mimetype, max_age=max_age, as_attachment=download_name is not None,
                         download_name=download_name)
