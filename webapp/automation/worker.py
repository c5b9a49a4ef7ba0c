"""The RQ worker class for pipeline jobs.

SimpleWorker runs each job in the worker process itself: no fork per batch (cheaper, and
the DB pool is never shared across a fork), and a SIGKILL stops the work at once, which
is what the recovery logic is built and tested for. SIGTERM is a warm shutdown: RQ lets
the current job end, and our job stops after the item in flight and re-queues the rest.
"""
from rq.worker import SimpleWorker

from . import tasks


class AutomationWorker(SimpleWorker):
    # RQ records a stop request only when a job is running; worker.py needs to know in
    # every case whether its loop ended on purpose (signal) or because Redis went away.
    stop_signalled = False

    def request_stop(self, signum, frame):
        self.stop_signalled = True
        tasks.request_shutdown()
        return super().request_stop(signum, frame)
