"""The RQ worker class for pipeline jobs.

SimpleWorker runs each job in the worker process itself: no fork per batch (cheaper, and
the DB pool is never shared across a fork), and a SIGKILL stops the work at once, which
is what the recovery logic is built and tested for. SIGTERM is a warm shutdown: RQ lets
the current job end, and our job stops after the item in flight and re-queues the rest.
With no fork, the worker process itself writes its metrics (one set of files per worker
process in PROMETHEUS_MULTIPROC_DIR) and its log lines carry the job's ids.
"""
import time

from rq.worker import SimpleWorker

from ..logging_setup import job_context
from . import dispatch, tasks


IDLE_POLL = 1  # s: how late a delayed job may be handed out by an idle worker


class AutomationWorker(SimpleWorker):
    # The pipeline queue fed by fair dispatch (dispatch.py); None for workers without it.
    pipeline_queue = None

    # RQ records a stop request only when a job is running; worker.py needs to know in
    # every case whether its loop ended on purpose (signal) or because Redis went away.
    stop_signalled = False

    def request_stop(self, signum, frame):
        self.stop_signalled = True
        tasks.request_shutdown()
        return super().request_stop(signum, frame)

    def _top_up(self):
        try:
            dispatch.top_up(self.connection, self.pipeline_queue)
        except Exception as e:  # redis trouble: RQ's own loop reports and retries it
            self.log.warning("fair dispatch: top-up failed (%s: %s)", e.__class__.__name__, e)

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        # About to wait for work: hand a ready job to RQ's list first, so a free worker never
        # sleeps while an account's job waits in its ready list.
        if not self.pipeline_queue:
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        # Waiting, it looks again every IDLE_POLL seconds: a run's delayed job (its pause
        # between batches or stages, dispatch.LATER) comes due without any job starting or
        # ending to top the list up, and an idle worker is what hands it out on time.
        idle_since = time.monotonic()
        while True:
            self._top_up()
            if timeout is None:  # burst: one look, no wait
                return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            result = super().dequeue_job_and_maintain_ttl(IDLE_POLL, max_idle_time=IDLE_POLL)
            if result is not None:
                return result
            if max_idle_time is not None and time.monotonic() - idle_since >= max_idle_time:
                return None

    def execute_job(self, job, queue):
        # job_id and the request_id that queued it (job.meta) on every line the job logs,
        # RQ's own "Job OK" included.
        with job_context(job):
            return super().execute_job(job, queue)
