"""Run logs on top of the store: numbered lines `<ISO time> [stage N] message`, appended by
workers (and by a web process that pauses a run), read by any web process.

Two layouts behind one interface (`open_run_log`):

- `FileRunLog` (a local or shared folder, the default): one file per run, appends serialised
  with flock and numbered through a counter file kept under the same lock; exactly the files of
  before, `LOG_DIR/<account>/<site>/<run>/automation_run.log`.
- `SegmentedRunLog` (an S3-compatible bucket): each line is numbered and appended to a Redis
  Stream of its run in one atomic script (INCR + XADD + PUBLISH), so lines from every machine
  that writes to the run are in one order, and a line is durable (in Redis) before `append`
  returns: a worker SIGKILLed afterwards loses nothing. Lines are flushed in order to immutable
  segment objects `…/<run>/seg/<first>-<last>.log` (every SEG_LINES lines or FLUSH_SECONDS,
  at job end, at run end) and trimmed from the stream except the last KEEP, so the stream
  stays small and a tail is one Redis read. Readers take segments + stream, numbered alike.

Each line is also published on Redis pub/sub (`log_channel`) for live tails in both layouts.
"""
import bisect
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict, deque
from pathlib import Path

import redis

from .base import StoreError
from .keys import run_prefix
from .local import LocalStore
from .logwindow import start_of_last, window_after, window_before

log = logging.getLogger(__name__)
INITIAL_LINES = 100


def log_channel(run_id):
    # In this installation's namespace (the Redis database's number): pub/sub spans databases.
    from ..redis_conn import channel_namespace
    return f"{channel_namespace()}run:{int(run_id)}:log"


def open_run_log(store, redis_client, account_id, site_id, run_id, log_dir=None):
    """The run's log in the app's store. `log_dir` (the file layout only) overrides where the
    file lives, for callers that pass LOG_DIR explicitly (AutomationLogger's signature)."""
    if isinstance(store, LocalStore):
        if log_dir is not None:
            path = Path(log_dir) / str(int(account_id)) / str(int(site_id)) / str(int(run_id)) / "automation_run.log"
        else:
            path = store.path(run_prefix(account_id, site_id, run_id) + "automation_run.log")
        return FileRunLog(path, redis_client, run_id)
    return SegmentedRunLog(store, redis_client, account_id, site_id, run_id)


class RunLog:
    """The interface both layouts implement; line numbers start at 1."""

    def append(self, line):
        """Add one line; returns its number."""
        raise NotImplementedError

    def count(self):
        """Lines written so far (O(1))."""
        raise NotImplementedError

    def tail(self, n):
        """The last n lines (cost grows with n, not with the log's size)."""
        raise NotImplementedError

    def tail_with_total(self, n):
        """(lines written so far, the last n lines): what `logs?lines=n` answers."""
        return self.count(), self.tail(n)

    def read_before(self, before, n):
        """(number of the first line returned, up to n lines numbered below `before`)."""
        raise NotImplementedError

    def read_after(self, after, n):
        """(after + 1, up to n complete lines numbered above `after`)."""
        raise NotImplementedError

    def iter_bytes(self):
        """The whole log, in order, as chunks of bytes (the download)."""
        raise NotImplementedError

    def follower(self, after=None):
        """An object whose read_new() gives [(number, line)] written since the last call,
        starting after line `after` (None: the last INITIAL_LINES)."""
        raise NotImplementedError

    def close(self):
        """The writer is done for now (job end): release files, flush what is worth it."""

    def finish(self):
        """The run ended: everything durable in the store, live buffers left to expire."""

    def delete(self, dry_run=False):
        """Remove the log; (objects, bytes) removed."""
        raise NotImplementedError


# -- the file layout --------------------------------------------------------------------------
def _lock_shared(fh):
    # Non-blocking tries with a short sleep: a blocking flock would stall every greenlet of
    # the process (gevent) while a writer holds the lock.
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(0.005)


def _publish(client, run_id, n, line):
    if client is not None:
        try:
            client.publish(log_channel(run_id), json.dumps({"n": n, "line": line}))
        except redis.RedisError as e:  # a live tail is best effort; the file is the record
            log.warning("log publish failed for run %s: %s", run_id, e)


class FileRunLog(RunLog):
    """One file per run. The log and counter files stay open for the writer's life (a worker's
    job writes a line per item: opening both files per line cost more than the rest of the
    line); `close()` releases them."""

    def __init__(self, path, redis_client, run_id):
        self.path = Path(path)
        self.count_path = self.path.with_suffix(".count")
        self.redis, self.run_id = redis_client, run_id
        self._fh = self._count_fd = None
        self._thread_lock = threading.Lock()

    def _open(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._count_fd = os.open(self.count_path, os.O_RDWR | os.O_CREAT, 0o600)

    def close(self):
        if self._fh is not None:
            self._fh.close()
            os.close(self._count_fd)
            self._fh = self._count_fd = None

    def append(self, line):
        # flock serialises processes, not the threads of one (a job's AI call threads log their
        # waits and retries next to its own thread): the thread lock does that.
        with self._thread_lock:
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
        _publish(self.redis, self.run_id, n, line)
        return n

    def count(self):
        return line_count(self.path)

    def tail(self, n):
        return tail(self.path, n)

    def read_before(self, before, n):
        # Bounded by the window, not the log's length (logwindow's sparse index).
        return window_before(self.path, before, n, self.count())

    def read_after(self, after, n):
        return window_after(self.path, after, n)

    def iter_bytes(self):
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return
        with fh:
            while chunk := fh.read(256 * 1024):
                yield chunk

    def follower(self, after=None, keep=2000):
        return LogFollower(self.path, after, keep=keep)

    def delete(self, dry_run=False):
        n = size = 0
        for p in (self.path, self.count_path):
            try:
                size += p.stat().st_size
                n += 1
                if not dry_run:
                    p.unlink()
            except FileNotFoundError:
                pass
        return n, size


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


# One read of a socket's log, in bytes: a socket far behind (a replay) catches up in reads of
# this size, sent as it goes, so its memory stays bounded whatever the log's length.
READ_MAX = 256 * 1024


class SharedTails:
    """The recent end of each followed log file, kept once per process: the hundred sockets
    on one run woken by one new line cost one stat each and one read in all, not a hundred
    opens and reads. A follower further back than what is kept reads the file itself."""

    KEEP = 256 * 1024

    def __init__(self):
        self.lock = threading.Lock()
        self.tails = {}  # path -> (start offset, bytes from start to the end read so far)

    def read_from(self, path, offset):
        path = str(path)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return b""
        if size <= offset:
            return b""  # nothing new: the common case of a poll, without opening the file
        if size - offset > self.KEEP:  # far behind the shared tail (a replay): a bounded read of its own
            try:
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    return fh.read(min(size - offset, READ_MAX))
            except FileNotFoundError:
                return b""
        with self.lock:
            start, buf = self.tails.get(path, (None, b""))
            end = start + len(buf) if start is not None else None
            if end is None or end < offset or end > size:  # unknown, behind us, or truncated
                start, buf = offset, b""
                end = offset
            if size > end:
                try:
                    with open(path, "rb") as fh:
                        fh.seek(end)
                        buf += fh.read(size - end)
                except FileNotFoundError:
                    return b""
            if len(buf) > self.KEEP:
                cut = len(buf) - self.KEEP
                start, buf = start + cut, buf[cut:]
            self.tails[path] = (start, buf)
            if len(self.tails) > 1000:  # many runs followed over time: keep memory bounded
                self.tails.pop(next(iter(self.tails)))
        if offset >= start:
            return buf[offset - start:]
        with open(path, "rb") as fh:  # a slow reader far behind: read what it needs
            fh.seek(offset)
            return fh.read(size - offset)


TAILS = SharedTails()


class LogFollower:
    """Reads complete new lines from a growing file, numbering them from 1.

    Starts at the last INITIAL_LINES lines, or after line `after` but never more than `keep`
    lines before the end (WS_REPLAY_LINES): `skipped` then names the lines left out (the
    caller sends a marker pointing at the download). Where to start is found reading the
    file backwards under the writer's lock, at a cost of O(lines replayed), not O(file)."""

    def __init__(self, path, after=None, keep=2000):
        self.path, self.offset, self.number = path, 0, 0
        self.skipped = None  # (first, last) line numbers not replayed
        self._start(INITIAL_LINES if after is None else None, after, keep)

    def _start(self, last_n, after, keep):
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return
        with fh:
            _lock_shared(fh)
            try:
                size = os.fstat(fh.fileno()).st_size
                total = _lines_in(fh, self.path, size)
                if last_n is not None:
                    n = min(last_n, total)
                else:
                    after = max(0, min(after, total))
                    n = total - after
                    if n > keep:
                        self.skipped = (after + 1, total - keep)
                        n = keep
                self.offset = start_of_last(fh, n, size)
                self.number = total - n
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def read_new(self):
        data = TAILS.read_from(self.path, self.offset)
        end = data.rfind(b"\n")
        if end < 0:
            if len(data) < READ_MAX:
                return []
            with open(self.path, "rb") as fh:  # one line longer than READ_MAX (rare): read it whole
                fh.seek(self.offset)
                data = fh.readline()
            end = data.rfind(b"\n")
            if end < 0:
                return []
        chunk = data[:end + 1]
        self.offset += len(chunk)
        out = []
        for raw in chunk.split(b"\n")[:-1]:
            self.number += 1
            out.append((self.number, raw.decode("utf-8", errors="replace")))
        return out


def _lines_in(fh, path, size):
    """Lines in the log (its counter file, kept by the writer under the lock we hold), or, for a
    log without one, counted (yielding between blocks)."""
    count = line_count(path)
    if count or size == 0:
        return count
    fh.seek(0)
    total = 0
    while True:
        block = fh.read(1024 * 1024)
        if not block:
            return total
        total += block.count(b"\n")
        time.sleep(0)


# -- the segmented layout (object storage) ---------------------------------------------------------
SEG_LINES = 2000      # a segment is written at most every this many lines…
FLUSH_SECONDS = 30    # …or this long after the writer's last flush
CLOSE_MIN_LINES = 200  # a job ending flushes only if this many lines wait (no tiny segments)
KEEP = 1000           # flushed lines kept in the stream: tails and live followers read Redis only
FINISHED_TTL = 24 * 3600  # the live keys of an ended run expire after this (the store has it all)
READ_BATCH = 5000

# KEYS: counter, stream, channel. ARGV: line, base (-1: unknown). Returns {n, ended}, or
# {-1, 0} when the counter is missing and the caller must supply the base (from the store).
_APPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  if ARGV[2] == '-1' then return {-1, 0} end
  redis.call('SET', KEYS[1], ARGV[2])
end
local ended = 0
if redis.call('PTTL', KEYS[1]) > 0 then ended = 1 end
local n = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], n .. '-1', 'l', ARGV[1])
redis.call('PUBLISH', KEYS[3], cjson.encode({n = n, line = ARGV[1]}))
return {n, ended}
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _seg_name(first, last):
    return f"{int(first):012d}-{int(last):012d}.log"


class _SegmentCache:
    """Per process: each run's segment index (listed once, then only what is new: segments are
    immutable), and the last segments read (paging back reads the same ones again)."""

    def __init__(self, runs=1000, blobs=64, blob_bytes=64 * 1024 * 1024):
        self.lock = threading.Lock()
        self.index = OrderedDict()   # seg prefix -> (last key listed, [(first, last, key)])
        self.blobs = OrderedDict()   # key -> [lines as bytes]
        self.blob_bytes, self.size = blob_bytes, 0
        self.max_runs, self.max_blobs = runs, blobs

    def ranges(self, store, prefix, refresh):
        ckey = f"{store.ident}|{prefix}"
        with self.lock:
            last_key, ranges = self.index.get(ckey, (None, []))
        if refresh or last_key is None:
            new = store.list(prefix, start_after=last_key)
            if new:
                ranges = _merge(ranges, new)
                last_key = new[-1]
            with self.lock:
                self.index[ckey] = (last_key, ranges)
                self.index.move_to_end(ckey)
                while len(self.index) > self.max_runs:
                    self.index.popitem(last=False)
        return ranges

    def forget(self, store, prefix):
        with self.lock:
            for k in [k for k in self.index if k.startswith(f"{store.ident}|{prefix}")]:
                self.index.pop(k)
            for k in [k for k in self.blobs if k.startswith(f"{store.ident}|{prefix}")]:
                self.size -= sum(map(len, self.blobs.pop(k)))

    def lines(self, store, key):
        ckey = f"{store.ident}|{key}"
        with self.lock:
            got = self.blobs.get(ckey)
            if got is not None:
                self.blobs.move_to_end(ckey)
                return got
        data = store.get(key)
        if data is None:
            return None
        got = data.split(b"\n")
        if got and got[-1] == b"":
            got.pop()
        with self.lock:
            self.blobs[ckey] = got
            self.size += len(data)
            while self.blobs and (len(self.blobs) > self.max_blobs or self.size > self.blob_bytes):
                _k, old = self.blobs.popitem(last=False)
                self.size -= sum(map(len, old))
        return got


SEGMENTS = _SegmentCache()


def _merge(ranges, keys):
    """Add listed segment keys to a sorted [(first, last, key)]. A flusher killed after its
    upload but before recording it leaves a segment that the next flush rewrites from the same
    first line with more lines: of segments sharing a first line, the longest wins."""
    by_first = {f: (f, l, k) for f, l, k in ranges}
    for key in keys:
        name = key.rsplit("/", 1)[-1]
        try:
            first, last = (int(x) for x in name[:-4].split("-"))
        except ValueError:
            continue
        have = by_first.get(first)
        if have is None or have[1] < last:
            by_first[first] = (first, last, key)
    return sorted(by_first.values())


class SegmentedRunLog(RunLog):
    def __init__(self, store, redis_client, account_id, site_id, run_id):
        self.store, self.r, self.run_id = store, redis_client, int(run_id)
        self.prefix = run_prefix(account_id, site_id, run_id)
        self.seg_prefix = self.prefix + "seg/"
        base = f"automation:run:{self.run_id}:log"
        self.k_count, self.k_stream, self.k_flushed, self.k_lock = (
            f"{base}:n", f"{base}:stream", f"{base}:flushed", f"{base}:flushlock")
        self._last_flush = time.monotonic()
        self._flushed_hint = None
        self._pending = []  # lines written while Redis was away: appended, in order, when it is back

    # -- writing ---------------------------------------------------------------------------
    def _store_last(self):
        ranges = SEGMENTS.ranges(self.store, self.seg_prefix, refresh=True)
        return ranges[-1][1] if ranges else 0

    def _append_one(self, line):
        keys = [self.k_count, self.k_stream, log_channel(self.run_id)]
        n, ended = self.r.eval(_APPEND, 3, *keys, line, -1)
        if n == -1:  # a new run, or Redis lost its keys: continue after what the store holds
            last = self._store_last()
            try:
                top = self.r.xrevrange(self.k_stream, count=1)
                if top:
                    last = max(last, int(top[0][0].split(b"-")[0]))
            except redis.RedisError:
                pass
            n, ended = self.r.eval(_APPEND, 3, *keys, line, last)
        return int(n), bool(ended)

    def append(self, line):
        try:
            while self._pending:
                self._append_one(self._pending[0])
                self._pending.pop(0)
            n, ended = self._append_one(line)
        except redis.RedisError as e:
            # Kept in order and written with the next line once Redis answers again.
            log.warning("run %s: log line kept in memory, Redis unavailable: %s", self.run_id, e)
            self._pending.append(line)
            return None
        if self._flushed_hint is None:
            self._flushed_hint = int(self.r.get(self.k_flushed) or 0)
        if ended or n - self._flushed_hint >= SEG_LINES or time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()  # a line after the run ended is flushed at once: its keys will expire
        return n

    def flush(self, min_lines=1):
        """Write the unflushed lines to one new segment. Serialised by a Redis lock (the worker
        and a web process pausing the run may both flush); returns the lines written."""
        self._last_flush = time.monotonic()
        token = uuid.uuid4().hex
        try:
            if not self.r.set(self.k_lock, token, nx=True, px=60_000):
                return 0  # another process is flushing this run right now
        except redis.RedisError:
            return 0
        try:
            raw = self.r.get(self.k_flushed)
            flushed = int(raw) if raw is not None else self._store_last()
            entries = self.r.xrange(self.k_stream, min=f"{flushed + 1}-0", max="+", count=SEG_LINES * 5)
            if not entries or len(entries) < min_lines:
                self._flushed_hint = flushed
                return 0
            first = int(entries[0][0].split(b"-")[0])
            last = int(entries[-1][0].split(b"-")[0])
            data = b"".join(fields[b"l"] + b"\n" for _id, fields in entries)
            self.store.put(self.seg_prefix + _seg_name(first, last), data, "text/plain; charset=utf-8")
            pipe = self.r.pipeline()
            pipe.set(self.k_flushed, last)
            if self.r.pttl(self.k_count) > 0:
                pipe.expire(self.k_flushed, FINISHED_TTL)
            pipe.xtrim(self.k_stream, minid=f"{max(1, last - KEEP + 1)}-0")
            pipe.execute()
            self._flushed_hint = last
            return len(entries)
        except (redis.RedisError, StoreError) as e:
            # Nothing lost: the lines stay in the stream and the next flush takes them.
            log.warning("run %s: log flush failed: %s", self.run_id, e)
            return 0
        finally:
            try:
                self.r.eval(_RELEASE, 1, self.k_lock, token)
            except redis.RedisError:
                pass

    def close(self):
        if self._pending:
            try:
                while self._pending:
                    self._append_one(self._pending[0])
                    self._pending.pop(0)
            except redis.RedisError:
                log.error("run %s: %d log lines lost, Redis unavailable", self.run_id, len(self._pending))
                self._pending = []
        self.flush(min_lines=CLOSE_MIN_LINES)

    def finish(self):
        for _ in range(1000):  # each flush takes up to SEG_LINES * 5 lines
            if not self.flush():
                break
        try:
            if self.r.exists(self.k_count):
                pipe = self.r.pipeline()
                for k in (self.k_count, self.k_stream, self.k_flushed):
                    pipe.expire(k, FINISHED_TTL)
                pipe.execute()
        except redis.RedisError:
            pass

    # -- reading ----------------------------------------------------------------------------
    def count(self):
        try:
            n = self.r.get(self.k_count)
            if n is not None:
                return int(n)
        except redis.RedisError:
            pass
        ranges = SEGMENTS.ranges(self.store, self.seg_prefix, refresh=True)
        return ranges[-1][1] if ranges else 0

    def _stream(self, lo, hi):
        try:
            got = self.r.xrange(self.k_stream, min=f"{lo}-0", max=f"{hi}-1" if hi else "+",
                                count=(hi - lo + 1) if hi else READ_BATCH)
        except redis.RedisError:
            return []
        return [(int(i.split(b"-")[0]), f[b"l"]) for i, f in got]

    def _segments(self, lo, hi):
        """Lines lo..hi from the segments, as [(number, bytes)]."""
        out = []
        for refresh in (False, True):
            ranges = SEGMENTS.ranges(self.store, self.seg_prefix, refresh=refresh)
            if ranges and ranges[-1][1] >= hi:
                break
        i = max(0, bisect.bisect_right(ranges, (lo, float("inf"), "")) - 1)
        covered = lo - 1
        for first, last, key in ranges[i:]:
            if first > hi:
                break
            if last <= covered:
                continue
            lines = SEGMENTS.lines(self.store, key)
            if lines is None:  # deleted meanwhile (retention): the index is stale
                SEGMENTS.forget(self.store, self.prefix)
                break
            start = max(first, covered + 1)
            for num in range(start, min(last, hi, first + len(lines) - 1) + 1):
                out.append((num, lines[num - first]))
            covered = out[-1][0] if out else covered
        return out

    def _raw_lines(self, lo, hi):
        """[(number, bytes)] for lo..hi (hi None: to the end), oldest first, no gaps."""
        lo = max(1, lo)
        if hi is not None and hi < lo:
            return []
        got = self._stream(lo, hi)
        if not got or got[0][0] > lo:
            # Nothing at `lo` in the stream: not written yet (a follower that is caught up: the
            # common case, answered by Redis alone), or flushed and trimmed (read the segments).
            upto = got[0][0] - 1 if got else min(self.count(), hi if hi is not None else float("inf"))
            if upto >= lo:
                got = self._segments(lo, upto) + got
            if hi is None and len(got) > READ_BATCH:
                got = got[:READ_BATCH]
        return got

    def _lines(self, lo, hi):
        """[(number, str)] for lo..hi (hi None: to the end), oldest first, no gaps."""
        return [(n, b.decode("utf-8", errors="replace")) for n, b in self._raw_lines(lo, hi)]

    def tail(self, n):
        return self.tail_with_total(n)[1]

    def tail_with_total(self, n):
        n = max(0, n)
        try:  # one round trip: the count and the stream's last n lines (each RTT counts)
            pipe = self.r.pipeline(transaction=False)
            pipe.get(self.k_count)
            pipe.xrevrange(self.k_stream, count=max(1, n))
            total, last = pipe.execute()
            if total is not None and len(last) >= min(n, int(total)):
                return int(total), [f[b"l"].decode("utf-8", errors="replace") for _i, f in reversed(last[:n])]
        except redis.RedisError:
            pass
        total = self.count()
        return total, ([line for _n, line in self._lines(total - n + 1, total)] if total and n else [])

    def read_before(self, before, n):
        hi = min(before - 1, self.count())
        got = self._lines(hi - n + 1, hi) if n > 0 and hi >= 1 else []
        return (got[0][0] if got else max(1, hi + 1)), [line for _n, line in got]

    def read_after(self, after, n):
        got = self._lines(after + 1, after + n) if n > 0 else []
        return after + 1, [line for _n, line in got]

    def iter_bytes(self):
        covered = 0
        ranges = SEGMENTS.ranges(self.store, self.seg_prefix, refresh=True)
        for first, last, key in ranges:
            if last <= covered:
                continue
            data = self.store.get(key)  # not through the cache: a download reads everything once
            if data is None:
                break
            lines = data.split(b"\n")[:-1]
            yield b"".join(ln + b"\n" for ln in lines[max(0, covered + 1 - first):])
            covered = first + len(lines) - 1
        while True:
            # Not the stream alone: a writer may have flushed and trimmed lines after `covered`
            # since the segments were listed above; _raw_lines reads such a gap from the store.
            got = self._raw_lines(covered + 1, None)
            if not got:
                return
            yield b"".join(b + b"\n" for _n, b in got)
            covered = got[-1][0]

    def follower(self, after=None, keep=2000):
        return StreamFollower(self, after, keep=keep)

    def delete(self, dry_run=False):
        n, size = self.store.delete_prefix(self.prefix, dry_run=dry_run)
        if not dry_run:
            SEGMENTS.forget(self.store, self.prefix)
            try:
                self.r.delete(self.k_count, self.k_stream, self.k_flushed)
            except redis.RedisError:
                pass
        return n, size


class StreamFollower:
    """A websocket's place in a segmented log: one XRANGE from its last line per wake-up."""

    def __init__(self, runlog, after=None, keep=2000):
        self.log = runlog
        self.skipped = None  # (first, last) line numbers not replayed (at most `keep` are)
        total = runlog.count()
        if after is None:
            self.number = max(0, total - INITIAL_LINES)
        else:
            self.number = max(0, min(after, total))
            if total - self.number > keep:
                self.skipped = (self.number + 1, total - keep)
                self.number = total - keep

    def read_new(self):
        got = self.log._lines(self.number + 1, None)
        if got:
            self.number = got[-1][0]
        return got
