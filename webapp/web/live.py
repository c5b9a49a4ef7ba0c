"""Websockets (flask-sock): the run log tail and the processing state.

The log file is the source of truth; Redis pub/sub only wakes the follower up, so any web
process can stream any run, and a missed message (or a Redis restart) delays a line by at
most POLL seconds instead of losing it. Admission (Origin 4403, auth 4401, per-user cap 4429)
and the periodic re-authentication of open sockets are in webapp/web/sockets.py; a run that
is not the caller's account's is 4404. Served by gunicorn's gevent worker (gunicorn.conf.py):
each socket is a greenlet, not a thread, so open sockets cost no request capacity.
"""
import fcntl
import os
import random
import json
import threading
import time
import weakref

import redis
from flask import Blueprint, current_app, request
from sqlalchemy import select

from .. import metrics
from ..automation.logger import line_count, log_channel, run_log_path
from ..automation.logwindow import start_of_last
from ..automation.state import read_state, state_channel
from ..extensions import db, sock
from ..models import AutomationRun
from ..redis_conn import get_redis
from . import sockets

# Routes on our own blueprint: registered on every app create_app builds (tests build many).
bp = Blueprint("live", __name__)
# Without a pub/sub wake-up (a message lost while Redis restarted), a socket re-reads its file
# after this long. Every socket polling each second cost ~2 % of a core per 100 idle sockets;
# every 3 s a third of that, and pub/sub still delivers lines at once.
POLL = 3.0
# Set by the gunicorn hook (gunicorn.conf.py) on SIGTERM: open sockets close with 1001
# ("going away") at once instead of being cut at the graceful timeout; clients reconnect.
SHUTDOWN = threading.Event()
INITIAL_LINES = 100
# One read of a socket's log, in bytes: a socket far behind (a replay) catches up in reads of
# this size, sent as it goes, so its memory stays bounded whatever the log's length.
READ_MAX = 256 * 1024


def _authorised_run(ws, conn, run_id):
    try:
        # run_id is None for a malformed id (the `anyid` converter): not found, like a foreign one.
        run = None if run_id is None else db.session.execute(select(AutomationRun).where(
            AutomationRun.id == run_id, AutomationRun.account_id == conn.caller.account_id)).scalar_one_or_none()
        if run is None:
            ws.close(4404, "run not found")
            return None
        db.session.expunge(run)
        return run
    finally:
        db.session.remove()  # do not hold a DB connection for the life of the socket


def _lock_shared(fh):
    # Non-blocking tries with a short sleep: a blocking flock would stall every greenlet of
    # the process (gevent) while a writer holds the lock.
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(0.005)


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


def replay_marker(run_id, skipped, keep):
    """The first message of a socket whose replay was cut (static/js/app.js reads the numbers)."""
    first, last = skipped
    return (f"[lines {first}-{last} not replayed: a live log replays at most {keep} lines; "
            f"the full log is at /runs/{int(run_id)}/log.txt]")


class Hub:
    """One Redis pub/sub connection per web process, fanned out to the sockets waiting on
    each channel (a connection per socket would exhaust the client's pool at ~100 sockets
    and cost Redis a connection per browser tab)."""

    PATTERN = "automation:run:*"

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.waiters = {}  # channel -> set of threading.Event
        self.thread = None

    def register(self, channel):
        ev = threading.Event()
        with self.lock:
            self.waiters.setdefault(channel, set()).add(ev)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._listen, name="live-hub", daemon=True)
                self.thread.start()
        return ev

    def wake_all(self):
        with self.lock:
            evs = [ev for group in self.waiters.values() for ev in group]
        for ev in evs:
            ev.set()

    def unregister(self, channel, ev):
        with self.lock:
            evs = self.waiters.get(channel)
            if evs:
                evs.discard(ev)
                if not evs:
                    del self.waiters[channel]

    def _listen(self):
        while True:
            try:
                with self.app.app_context():
                    ps = get_redis().pubsub(ignore_subscribe_messages=True)
                ps.psubscribe(self.PATTERN)
                for msg in ps.listen():
                    if msg.get("type") != "pmessage":
                        continue
                    channel = msg["channel"].decode() if isinstance(msg["channel"], bytes) else msg["channel"]
                    with self.lock:
                        evs = list(self.waiters.get(channel, ()))
                    for ev in evs:
                        ev.set()
            except redis.RedisError:
                time.sleep(1)  # Redis away: sockets fall back to polling the file meanwhile


def hub():
    app = current_app._get_current_object()
    h = app.extensions.get("live_hub")
    if h is None:
        with _HUB_LOCK:
            h = app.extensions.setdefault("live_hub", Hub(app))
            _APPS.add(app)
    return h


_HUB_LOCK = threading.Lock()


def shutdown(app=None):
    """The server is stopping: every open socket closes with 1001 now (not at its next poll)."""
    SHUTDOWN.set()
    apps = [app] if app is not None else list(_APPS)
    for a in apps:
        h = a.extensions.get("live_hub")
        if h is not None:
            h.wake_all()


_APPS = weakref.WeakSet()  # apps whose hub may hold waiters (one per process in production)


def _stream(ws, conn, channel, produce):
    """Send what produce() returns, now and after every wake-up (a pub/sub message on
    `channel`, or POLL seconds), until the client leaves, the server shuts down or the
    caller's token / session is gone."""
    h = hub()
    ev = h.register(channel)
    metrics.websocket_opened()
    try:
        while ws.connected and not SHUTDOWN.is_set():
            if not conn.still_allowed():
                conn.close_for_auth()
                return
            for message in produce():
                ws.send(message)
            # Jittered so that sockets opened together do not all poll in the same instant.
            ev.wait(min(POLL * (0.75 + random.random() / 2), conn.seconds_to_check()))
            ev.clear()  # cleared before the next read: a line written meanwhile sets it again
        if SHUTDOWN.is_set():
            ws.close(1001, "server restarting")
    finally:
        metrics.websocket_closed()
        h.unregister(channel, ev)


@sock.route("/ws/runs/<anyid:run_id>/logs", bp=bp)
def ws_logs(ws, run_id):
    with sockets.admitted(ws, "logs") as conn:
        run = conn and _authorised_run(ws, conn, run_id)
        if run is None:
            return
        path = run_log_path(current_app.config["LOG_DIR"], run.account_id, run.site_id, run.id)
        keep = current_app.config["WS_REPLAY_LINES"]
        follower = LogFollower(path, request.args.get("after", type=int), keep=keep)

        def produce():
            # A generator: a socket far behind sends READ_MAX bytes at a time as it reads them.
            if follower.skipped:
                yield replay_marker(run.id, follower.skipped, keep)
                follower.skipped = None
            while True:
                lines = follower.read_new()
                if not lines:
                    return
                for _n, line in lines:
                    yield line
        _stream(ws, conn, log_channel(run_id), produce)


@sock.route("/ws/runs/<anyid:run_id>/processing", bp=bp)
def ws_processing(ws, run_id):
    with sockets.admitted(ws, "processing") as conn:
        run = conn and _authorised_run(ws, conn, run_id)
        if run is None:
            return
        _stream_processing(ws, conn, run_id)


def _stream_processing(ws, conn, run_id):
    last = [object()]

    def changed_state():
        try:
            state = read_state(get_redis(), run_id)
        except redis.RedisError:
            return []
        if state == last[0]:
            return []
        last[0] = state
        return [json.dumps(state)]

    _stream(ws, conn, state_channel(run_id), changed_state)
