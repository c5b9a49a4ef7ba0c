"""Up to N units of a stage with their AI calls in flight at once, finished in order.

The job's own thread does every database read and write: it prepares a unit (reads its
inputs), hands the AI call (no database) to a pool thread, and commits the results one by
one *in the units' order*. So each item still commits output + AITaskLog + ledger + debit in
one transaction of the job's session, and a run at concurrency N makes exactly the same
writes in the same order as at concurrency 1 (stage 1's batches see the clusters of every
batch before them: a batch whose inputs changed while its call was in flight is called
again before it is applied; see stages.Stale).

Stopping (pause, cancel, SIGTERM, lost heartbeat, or a unit's verdict STOP: the run paused
itself): no new unit is started and no unit is retried; the stop event ends every wait of
the calls (rate limit, backoff) at once, so a call not yet sent is never sent; calls already
on the wire are awaited and their units finished in order: an answer the provider gave (and
billed) is committed and charged, a call that did not get one leaves no trace.
"""
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

NEXT, RETRY, REDO, STOP, DROP = "next", "retry", "redo", "stop", "drop"


class Slot:
    """One unit on its way: its attempt number, prepared request and call future."""
    __slots__ = ("unit", "attempt", "request", "future", "ctx")

    def __init__(self, unit):
        self.unit, self.attempt, self.request, self.future, self.ctx = unit, 0, None, None, None


def done_future(value=None):
    f = Future()
    f.set_result(value)
    return f


class CallPool:
    """The threads that wait on the provider for one job; `stop` interrupts their waits."""

    def __init__(self, size, name="ai"):
        self.size = max(1, int(size))
        self.stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=self.size, thread_name_prefix=name)

    def submit(self, fn, *args):
        return self._pool.submit(fn, *args)

    def close(self):
        self.stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)


def run_in_order(units, limit, start, finish, may_start, still_running=None, on_started=None,
                 stop=None, poll=0.25, check_every=0.5, refill=None, backlog=4):
    """Process `units` with at most `limit` calls in flight; returns "done" or "stopped".

    refill()         asked for more units whenever all given ones have started and a call
                     slot is free; [] ends the asking. So a job goes on into the next batch
                     with its window full instead of draining it at every batch's end.
    backlog          at most limit x backlog units started and not yet finished (a slow head
                     unit must not let finished ones pile up without bound)
    start(slot)      prepare the unit and set slot.future (the job's thread)
    finish(slot)     commit or record the head unit -> NEXT | RETRY (counted attempt) |
                     REDO (inputs changed, not an attempt) | STOP (the run paused) | DROP
    may_start()      asked before each round of starts: False stops the job (pause, ...)
    still_running()  asked at most every `check_every` s while calls are in flight, so a
                     pause interrupts the calls' waits within a second
    """
    waiting = deque(Slot(u) for u in units)
    started = deque()
    stopping = False
    last_check = time.monotonic()

    def halt():
        nonlocal stopping
        stopping = True
        if stop is not None:
            stop.set()

    def in_flight():
        return sum(1 for s in started if not s.future.done())

    while started or (waiting and not stopping) or (refill is not None and not stopping):
        if not waiting and refill is not None and not stopping and in_flight() < limit:
            more = refill()
            if more:
                waiting.extend(Slot(u) for u in more)
            else:
                refill = None
                if not started:
                    break
        if waiting and not stopping and in_flight() < limit and len(started) < limit * backlog:
            if may_start():
                while waiting and in_flight() < limit and len(started) < limit * backlog:
                    slot = waiting.popleft()
                    start(slot)
                    started.append(slot)
                if on_started:
                    on_started([s.unit for s in started], len(waiting))
                last_check = time.monotonic()
            else:
                halt()
        if not started:
            break
        head = started[0]
        if not head.future.done():
            wait([s.future for s in started if not s.future.done()], timeout=poll, return_when=FIRST_COMPLETED)
            if still_running and not stopping and time.monotonic() - last_check >= check_every:
                last_check = time.monotonic()
                if not still_running():
                    halt()
            continue
        started.popleft()
        verdict = finish(head)
        if verdict in (RETRY, REDO):
            if stopping:
                continue  # not redone now: the unit is still pending, it left no trace
            if not may_start():  # a retry is a new call: asked like any other start
                halt()
                continue
            if verdict == RETRY:
                head.attempt += 1
            start(head)
            started.appendleft(head)
        elif verdict == STOP:
            # The rest are still finished (their waits end at once): answers that arrived
            # are kept and charged, the others dropped by `finish` while stopping.
            halt()
    return "stopped" if stopping else "done"
