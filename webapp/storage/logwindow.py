"""Windows of a run log whose cost is bounded by the window, not by the log's length.

The readers in logger.py (`read_before`, `read_after`) walk the file from line 1: on a
250k-line log each call read ~25 MB, and in the gevent web process that held every other
request. Here a sparse index per file (line count at every BLOCK bytes, built once per
process and extended as the file grows, yielding between blocks) finds where line N starts
in one short read, and the end of a log is read backwards. A call then costs O(lines asked)
plus at most one BLOCK; the index of a 250k-line log is a few hundred integers.

Entry points: `window_before`, `window_after`, `start_of_last` (the websocket replay).
"""
import bisect
import os
import threading
import time
from collections import OrderedDict

BLOCK = 64 * 1024
MAX_FILES = 256  # indexes kept per process (least recently used dropped)


def _pause():
    time.sleep(0)  # gevent (monkey-patched): let other greenlets run between blocks


class _Index:
    __slots__ = ("offsets", "counts", "size")

    def __init__(self):
        # offsets[i] is a byte offset; counts[i] the number of b"\n" before it.
        self.offsets, self.counts, self.size = [0], [0], 0


_indexes = OrderedDict()
_lock = threading.Lock()


def _index(path, size):
    key = str(path)
    with _lock:
        idx = _indexes.pop(key, None)
        if idx is None or idx.size > size:  # new, or the file was replaced by a shorter one
            idx = _Index()
        _indexes[key] = idx
        while len(_indexes) > MAX_FILES:
            _indexes.popitem(last=False)
    if idx.size < size:
        with open(path, "rb") as fh:
            # counts[-1] counts the newlines before offsets[-1]: go on from there.
            pos, count = idx.offsets[-1], idx.counts[-1]
            fh.seek(pos)
            while pos < size:
                data = fh.read(min(BLOCK, size - pos))
                if not data:
                    break
                pos += len(data)
                count += data.count(b"\n")
                if len(data) == BLOCK:
                    idx.offsets.append(pos)
                    idx.counts.append(count)
                _pause()
        idx.size = size
    return idx


def offset_of_line(path, number):
    """Byte offset where line `number` (1-based) starts; the end of the file if it has fewer."""
    size = os.stat(path).st_size
    if number <= 1 or size == 0:
        return 0
    idx = _index(path, size)
    # The last indexed point with fewer than number-1 newlines before it.
    i = bisect.bisect_left(idx.counts, number - 1) - 1
    i = max(0, i)
    pos, count = idx.offsets[i], idx.counts[i]
    with open(path, "rb") as fh:
        fh.seek(pos)
        while pos < size:
            data = fh.read(BLOCK)
            if not data:
                break
            need = number - 1 - count
            n = data.count(b"\n")
            if n < need:
                pos, count = pos + len(data), count + n
                continue
            cut = -1
            for _ in range(need):
                cut = data.index(b"\n", cut + 1)
            return pos + cut + 1
    return size


def read_lines_at(path, offset, n, complete_only=True):
    """Up to n lines from `offset` (a line start): (lines as str, offset after them)."""
    out = []
    with open(path, "rb") as fh:
        fh.seek(offset)
        while len(out) < n:
            raw = fh.readline()
            if not raw or (complete_only and not raw.endswith(b"\n")):
                break
            offset += len(raw)
            out.append(raw.rstrip(b"\n").decode("utf-8", errors="replace"))
    return out, offset


def start_of_last(fh, n, size):
    """Byte offset of the start of the last n complete lines of an open file of `size` bytes
    ending with a newline (read backwards: O(n) whatever the file's length)."""
    if n <= 0 or size == 0:
        return size
    pos, seen = size, 0
    while pos > 0:
        step = min(BLOCK, pos)
        fh.seek(pos - step)
        data = fh.read(step)
        end = len(data) if pos < size else len(data) - 1  # the file's final newline ends line n
        while True:
            cut = data.rfind(b"\n", 0, end)
            if cut < 0:
                break
            seen += 1
            if seen == n:
                return pos - step + cut + 1
            end = cut
        pos -= step
    return 0


def window_before(path, before, n, total):
    """Up to n lines numbered below `before` (`total`: lines in the log): (number of the
    first, lines)."""
    before = min(before, total + 1)
    try:
        first = max(1, before - n)
        lines, _ = read_lines_at(path, offset_of_line(path, first), max(0, before - first))
    except FileNotFoundError:
        return 1, []
    return first, lines


def window_after(path, after, n):
    """Up to n complete lines numbered above `after`: (number of the first, lines)."""
    try:
        lines, _ = read_lines_at(path, offset_of_line(path, after + 1), n)
    except FileNotFoundError:
        return after + 1, []
    return after + 1, lines
