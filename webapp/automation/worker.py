"""The RQ worker class for pipeline jobs.

SimpleWorker runs each job in the worker process itself: no fork per batch (cheaper, and
the DB pool is never shared across a fork), and a SIGKILL stops the work at once, which
is what the recovery logic is built and tested for. SIGTERM is a warm shutdown: RQ lets
the current job end, and our job stops after the item in flight and re-queues the rest.
With no fork, the worker process itself writes its metrics (one set of files per worker
process in PROMETHEUS_MULTIPROC_DIR) and its log lines carry the job's ids.
"""
from rq.worker import SimpleWorker

from ..logging_setup import job_context
from . import tasks


class AutomationWorker(SimpleWorker):
    # RQ records a stop request only when a job is running; worker.py needs to know in
    # every case whether its loop ended on purpose (signal) or because Redis went away.
    stop_signalled = False

    def request_stop(self, signum, frame):
        self.stop_signalled = True
        tasks.request_shutdown()
        return super().request_stop(signum, frame)

    def execute_job(self, job, queue):
        # job_id and the request_id that queued it (job.meta) on every line the job logs,
        # RQ's own "Job OK" included.
        with job_context(job):
            return super().execute_job(job, queue)
