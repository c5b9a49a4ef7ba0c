"""Websockets (flask-sock): the run log tail and the processing state.

The run's log in the store (a file, or a Redis Stream + segments in object storage: see
webapp/storage/logs.py) is the source of truth; Redis pub/sub only wakes the follower up, so
any web process can stream any run, whichever machine writes it, and a missed message (or a
Redis restart) delays a line by at most POLL seconds instead of losing it. Admission (Origin 4403, auth 4401, per-user cap 4429)
and the periodic re-authentication of open sockets are in webapp/web/sockets.py; a run that
is not the caller's account's is 4404, one whose log retention deleted is 4410. Served by gunicorn's gevent worker (gunicorn.conf.py):
each socket is a greenlet, not a thread, so open sockets cost no request capacity.
"""
import random
import json
import threading
import time
import weakref

import redis
from flask import Blueprint, current_app, request
from sqlalchemy import select

from .. import metrics
from ..automation.logger import log_channel, run_log
from ..automation.state import read_state, state_channel
from ..extensions import db, sock
from ..models import AutomationRun
from ..redis_conn import channel_namespace, get_redis
from ..storage.logs import INITIAL_LINES, READ_MAX, TAILS, LogFollower, SharedTails  # noqa: F401  (were defined here)
from . import sockets

# Routes on our own blueprint: registered on every app create_app builds (tests build many).
bp = Blueprint("live", __name__)
# Without a pub/sub wake-up (a message lost while Redis restarted), a socket re-reads its file
# after this long. Every socket polling each second cost ~2 % of a core per 100 idle sockets;
# every 3 s a third of that, and pub/sub still delivers lines at once.
POLL = 3.0
IDLE_CHECK = 1.0  # how often the hub's listener looks whether any socket still waits
# Set by the gunicorn hook (gunicorn.conf.py) on SIGTERM: open sockets close with 1001
# ("going away") at once instead of being cut at the graceful timeout; clients reconnect.
SHUTDOWN = threading.Event()


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




def replay_marker(run_id, skipped, keep):
    """The first message of a socket whose replay was cut (static/js/app.js reads the numbers)."""
    first, last = skipped
    return (f"[lines {first}-{last} not replayed: a live log replays at most {keep} lines; "
            f"the full log is at /runs/{int(run_id)}/log.txt]")
class Hub:
    """One Redis pub/sub connection per web process, fanned out to the sockets waiting on
    each channel (a connection per socket would exhaust the client's pool at ~100 sockets
    and cost Redis a connection per browser tab)."""

    PATTERN = "run:*"  # under the installation's channel namespace (redis_conn.channel_namespace)

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

    def _stop_if_idle(self):
        """True when no socket waits: the listener ends (under the lock register takes, so a
        socket registering now starts a new one)."""
        with self.lock:
            if self.waiters:
                return False
            self.thread = None
            return True

    def _listen(self):
        """Subscribed only while some socket of this process waits: with none left the thread
        ends and its connection closes (the next socket starts it again). Subscribed for good,
        a web process with no live page open still received and decoded every log line of
        every run on the installation; and in the test suite each test's app left one such
        listener behind."""
        while True:
            if self._stop_if_idle():
                return
            ps = None
            try:
                with self.app.app_context():
                    ps = get_redis().pubsub()
                    pattern = channel_namespace() + self.PATTERN
                ps.psubscribe(pattern)
                while True:
                    msg = ps.get_message(timeout=IDLE_CHECK)
                    if self._stop_if_idle():
                        return
                    if msg is None:
                        continue
                    if msg.get("type") == "psubscribe":
                        # Lines published before the subscription took were not heard: every
                        # waiting socket reads again now rather than at its next poll.
                        self.wake_all()
                        continue
                    if msg.get("type") != "pmessage":
                        continue
                    channel = msg["channel"].decode() if isinstance(msg["channel"], bytes) else msg["channel"]
                    with self.lock:
                        evs = list(self.waiters.get(channel, ()))
                    for ev in evs:
                        ev.set()
            except redis.RedisError:
                time.sleep(1)  # Redis away: sockets fall back to polling the file meanwhile
            finally:
                if ps is not None:
                    try:
                        ps.close()
                    except redis.RedisError:
                        pass


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
        if run.files_pruned_at is not None:
            ws.close(4410, "log deleted by retention")
            return
        keep = current_app.config["WS_REPLAY_LINES"]
        follower = run_log(run).follower(request.args.get("after", type=int), keep=keep)

        def produce():
            # A generator: a socket far behind sends one bounded read at a time as it goes.
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
