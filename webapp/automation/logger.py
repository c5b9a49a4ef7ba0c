"""Run logs: one plain-text file per run, lines `<ISO time> [stage N] message`.

Appends are serialised with flock (the worker and a web process that pauses a run may write
at once) and numbered through a counter file kept under the same lock, so a websocket client
can resume after line N. Each line is also published on Redis pub/sub for live tails.
"""
import fcntl
import json
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

import redis

log = logging.getLogger(__name__)


def log_channel(run_id):
    return f"automation:run:{int(run_id)}:log"


def run_log_dir(log_dir, account_id, site_id, run_id):
    # Built from integer ids only: no user input reaches the path.
    return Path(log_dir) / str(int(account_id)) / str(int(site_id)) / str(int(run_id))


def run_log_path(log_dir, account_id, site_id, run_id):
    return run_log_dir(log_dir, account_id, site_id, run_id) / "automation_run.log"


class AutomationLogger:
    """Appends to one run's log. The log and counter files stay open for the logger's life
    (a worker's job writes a line per item: opening both files per line cost more than the
    rest of the line); `close()` releases them, as does dropping the logger."""

    def __init__(self, log_dir, run, redis_client=None):
        self.run_id = run.id
        self.path = run_log_path(log_dir, run.account_id, run.site_id, run.id)
        self.count_path = self.path.with_suffix(".count")
        self.redis = redis_client
        self._fh = self._count_fd = None
        self._lock = threading.Lock()

    def _open(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._count_fd = os.open(self.count_path, os.O_RDWR | os.O_CREAT, 0o600)

    def close(self):
        if self._fh is not None:
            self._fh.close()
            os.close(self._count_fd)
            self._fh = self._count_fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def log(self, message, stage=None):
        ts = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        tag = f"[stage {stage}]" if stage else "[run]"
        line = f"{ts} {tag} {' '.join(str(message).split())}"
        # flock serialises processes, not the threads of one (a job's AI call threads log
        # their waits and retries next to its own thread): the thread lock does that.
        with self._lock:
            return self._append(line)

    def _append(self, line):
        if self._fh is None:
            self._open()
        fh = self._fh
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            try:
                n = int(os.pread(self._count_fd, 32, 0) or 0) + 1
            except ValueError:
                n = 1
            fh.write(line + "\n")
            fh.flush()
            # The count only grows, so overwriting in place never leaves a reader a shorter,
            # half-written number (nor an empty file, as truncate-then-write did).
            data = str(n).encode()
            os.pwrite(self._count_fd, data, 0)
            os.ftruncate(self._count_fd, len(data))
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
        if self.redis is not None:
            try:
                self.redis.publish(log_channel(self.run_id), json.dumps({"n": n, "line": line}))
            except redis.RedisError as e:  # a live tail is best effort; the file is the record
                log.warning("log publish failed for run %s: %s", self.run_id, e)
        return n, line


def _read_count(path):
    try:
        return int(path.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def line_count(path):
    """Lines written so far (from the counter file, O(1))."""
    return _read_count(Path(path).with_suffix(".count"))


def tail(path, n, block=64 * 1024):
    """The last n lines of a file, reading backwards from the end in blocks: the cost depends
    on n and line length, not on the file size. A partial last line (no newline yet) counts."""
    if n <= 0:
        return []
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return []
    with fh:
        fh.seek(0, os.SEEK_END)
        pos = fh.tell()
        data = b""
        while pos > 0 and data.count(b"\n") <= n:
            step = min(block, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if pos > 0:  # the first piece may be a cut line; we read more than n lines so drop it
        lines = lines[1:]
    return [ln.decode("utf-8", errors="replace") for ln in lines[-n:]]


def read_from(path, after):
    """Lines after line number `after` (1-based numbering), for websocket resumes."""
    out = []
    try:
        with open(path, "rb") as fh:
            for i, raw in enumerate(fh, start=1):
                if i > after:
                    out.append((i, raw.rstrip(b"\n").decode("utf-8", errors="replace")))
    except FileNotFoundError:
        pass
    return out


def read_before(path, before, n):
    """Up to n lines numbered below `before` (1-based), for paging a log backwards:
    (number of the first line returned, lines). One forward pass keeping the last n."""
    from collections import deque
    window = deque(maxlen=max(0, n))
    last = 0
    try:
        with open(path, "rb") as fh:
            for i, raw in enumerate(fh, start=1):
                if i >= before:
                    break
                window.append(raw.rstrip(b"\n").decode("utf-8", errors="replace"))
                last = i
    except FileNotFoundError:
        pass
    return last - len(window) + 1, list(window)


def read_after(path, after, n):
    """Up to n complete lines numbered above `after` (for polling clients that cannot keep a
    websocket): (number of the first line returned, lines)."""
    out = []
    try:
        with open(path, "rb") as fh:
            for i, raw in enumerate(fh, start=1):
                if i <= after:
                    continue
                if not raw.endswith(b"\n") or len(out) >= n:
                    break
                out.append(raw[:-1].decode("utf-8", errors="replace"))
    except FileNotFoundError:
        pass
    return after + 1, out
