"""The running job's heartbeat, on its own clock (a thread), independent of items.

Every `interval` seconds it renews the run's exec lock and site lock in Redis and writes
`heartbeat_at` in the database, so a single AI call longer than STALE_RUN_SECONDS is never
mistaken for a dead worker; a SIGKILLed worker's beats stop at once, and the stale check
continues its run. The database write is conditional on the job's token and the run still
`running`: when it matches nothing (paused, cancelled, taken over by a recovery) or the
exec lock belongs to someone else, `on_lost` is called so the job stops starting items.
"""
import logging
import threading

import redis
from sqlalchemy import update

from ..extensions import db
from ..models import AutomationRun
from ..models.base import utcnow

log = logging.getLogger(__name__)


def interval_for(stale_seconds):
    """Four beats per stale window, at most 5 s apart."""
    return max(0.2, min(5.0, stale_seconds / 4.0))


class Heartbeat(threading.Thread):
    def __init__(self, app, run_id, token, exec_lock, site_lock, interval, on_lost):
        super().__init__(name=f"heartbeat-run-{run_id}", daemon=True)
        self.app, self.run_id, self.token = app, run_id, token
        self.exec_lock, self.site_lock = exec_lock, site_lock
        self.interval, self.on_lost = interval, on_lost
        self._halt = threading.Event()
        self.beats = 0

    def stop(self):
        self._halt.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=self.interval + 10)

    def run(self):
        # Its own app context, hence its own database session (Flask-SQLAlchemy scopes
        # sessions per app context): it never touches the job's transaction.
        # The exec lock is also renewed on a clock of its own: a beat's database write can wait
        # seconds for SQLite's write lock (busy_timeout), longer than the lock's lease, and a
        # lease lost meanwhile would let the next job's calls overlap this job's last one.
        keeper = threading.Thread(target=self._keep_exec_lock, name=f"{self.name}-lock", daemon=True)
        keeper.start()
        with self.app.app_context():
            try:
                while not self._halt.wait(self.interval):
                    if self.lost:
                        # Told to stop, but calls may still be finishing: the exec lock
                        # stays ours until the job ends, so no other job overlaps them.
                        self.renew_exec_lock()
                    elif not self.beat():
                        self.lost = True
                        self.on_lost()
            finally:
                db.session.remove()

    lost = False

    def _keep_exec_lock(self):
        while not self._halt.wait(self.interval):
            try:
                self.exec_lock.renew()  # ours only: a foreign holder's lock is left alone (beat() sees it)
            except redis.RedisError:
                pass

    def renew_exec_lock(self):
        try:
            if self.exec_lock.hold():
                return True
            log.warning("run %s: exec lock taken by another job; stopping", self.run_id)
            return False
        except redis.RedisError as e:
            log.warning("run %s: heartbeat could not reach Redis (%s)", self.run_id, e.__class__.__name__)
            return True

    def beat(self):
        """One beat; False when the job must stop."""
        # Redis first: if the database is slow, the exec lock alone still tells the stale
        # check that this run has a live worker.
        if not self.renew_exec_lock():
            return False
        try:
            # Never taken from another holder: a new start may own it once this run ended.
            self.site_lock.claim()
        except redis.RedisError as e:
            log.warning("run %s: heartbeat could not reach Redis (%s)", self.run_id, e.__class__.__name__)
        try:
            q = update(AutomationRun).where(AutomationRun.id == self.run_id, AutomationRun.status == "running")
            if self.token is not None:
                q = q.where(AutomationRun.job_token == self.token)
            res = db.session.execute(q.values(heartbeat_at=utcnow()))
            db.session.commit()
            self.beats += 1
            return res.rowcount == 1
        except Exception as e:  # the database is failing: the job's own writes will tell
            db.session.rollback()
            log.warning("run %s: heartbeat could not write (%s)", self.run_id, e.__class__.__name__)
            return True
