"""Provider rate limits, shared by every call of every worker through Redis.

- `SharedLimiter`: requests per minute to one provider (env AI_MAX_RPM; unset = no cap),
  spaced evenly (GCRA: one request per 60/rpm s, computed on Redis's clock so all workers
  agree), plus a shared "blocked until": when the provider answers 429 with Retry-After,
  every call of every worker waits it out instead of each finding out by its own 429.
- `ProviderGate.call(fn)`: runs one AI call under those limits. A 429 waits (Retry-After,
  or jittered exponential backoff without it) and is never counted as an attempt; only a
  provider that keeps refusing for `pause_after` seconds (AI_RATE_LIMIT_PAUSE_AFTER) raises
  RateLimitExhausted, which pauses the run ("AI provider rate limit"). 5xx and connection
  errors get a bounded number of jittered retries, then ProviderUnavailable pauses the run
  ("AI provider unavailable"). Every wait ends at once when the run's stop event is set.
- `AdaptiveWindow`: the calls in flight to one provider from one worker process, lowered on
  429 and raised again while answers come (AIMD), so a provider that limits requests in
  flight is used near its limit instead of flooded (a 429 with other calls in flight shrinks
  the window and waits alone; one refused alone blocks every call, as a rate limit).
"""
import email.utils
import hashlib
import logging
import math
import random
import threading
import time

import redis

from .. import metrics
from .base import ProviderUnavailable, RateLimited

log = logging.getLogger(__name__)
MAX_BACKOFF = 30.0

# KEYS: tat, blocked_until. ARGV: ms per request (0 = no cap). Returns ms to wait (0 = go, and
# the slot is taken). Times are Redis's (TIME), so workers with skewed clocks share one timeline.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local blocked = tonumber(redis.call('GET', KEYS[2]) or '0')
if blocked > now then return blocked - now end
local interval = tonumber(ARGV[1])
if interval <= 0 then return 0 end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
-- A caller that woke a little late (up to one interval) keeps the slot's time: lateness is
-- caught up instead of lost (at most two requests back to back), so a binding limit is used.
if tat < now - interval then tat = now - interval end
if tat > now then return tat - now end
redis.call('SET', KEYS[1], tat + interval, 'PX', interval + 60000)
return 0
"""
# KEYS: blocked_until. ARGV: ms to block from now. Only ever extends the block.
_BLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local untl = now + tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if untl > cur then redis.call('SET', KEYS[1], untl, 'PX', tonumber(ARGV[1]) + 1000) end
return untl
"""


class RateLimitExhausted(ProviderUnavailable):
    """The provider refused (429) for longer than AI_RATE_LIMIT_PAUSE_AFTER: pause the run."""


class Interrupted(Exception):
    """The run is stopping (pause, cancel, shutdown): the call was not made or not finished."""


def parse_retry_after(headers):
    """Seconds to wait from `retry-after-ms`, `retry-after` (seconds, fractions accepted) or an
    HTTP date; None when absent or unreadable."""
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError, IndexError):
            return None
    return None


def backoff(n, base=0.5, cap=MAX_BACKOFF):
    """Jittered exponential backoff for the n-th consecutive failure (n >= 1): a random wait
    in [d/2, d] with d = base x 2^n, so calls that failed together do not retry together."""
    d = min(cap, base * (2 ** n))
    return random.uniform(d / 2, d)


def limiter_scope(config):
    """One limit per provider endpoint (workers of one install share it)."""
    name = config.get("AI_PROVIDER", "local")
    url = config.get("OPENAI_BASE_URL", "") if name == "openai" else ""
    return f"{name}:{hashlib.sha1(url.encode()).hexdigest()[:12]}"


class SharedLimiter:
    def __init__(self, client, rpm=None, scope="default"):
        self.r = client
        self.interval_ms = int(math.ceil(60000 / rpm)) if rpm else 0
        self.keys = [f"ai:ratelimit:{scope}:tat", f"ai:ratelimit:{scope}:blocked"]
        # Also kept locally: with Redis unreachable the calls of this process still wait.
        self._local_blocked = 0.0
        self._warned = False

    def delay(self):
        """Seconds to wait before the next request; 0 means go (and the slot is taken)."""
        local = self._local_blocked - time.monotonic()
        if local > 0:
            return local
        try:
            return int(self.r.eval(_ACQUIRE, 2, *self.keys, self.interval_ms)) / 1000.0
        except redis.RedisError as e:
            if not self._warned:
                self._warned = True
                log.warning("AI rate limiter: Redis unavailable (%s); limits apply per process only",
                            e.__class__.__name__)
            return 0.0

    def block(self, seconds):
        """Nobody calls the provider for `seconds` (it said so in a 429)."""
        seconds = max(0.0, float(seconds))
        self._local_blocked = max(self._local_blocked, time.monotonic() + seconds)
        try:
            self.r.eval(_BLOCK, 1, self.keys[1], int(seconds * 1000))
        except redis.RedisError:
            pass


class AdaptiveWindow:
    """How many calls this process keeps in flight to one provider, learned from its 429s
    (AIMD: shared by every job of the worker process, so the runs it serves one after the
    other, and the job after a slice boundary, start from what was learned).

    A call refused while n calls were in flight (itself included) says the provider takes
    fewer than n: the window drops to n - 1 at once (every call refused in the same burst
    says the same, so a burst never collapses it further; a refusal at a level the provider
    has been answering is forgiven once per window of answers, as its count lagging a call
    that just ended). Answers make it grow again by one
    per `window` answers (about one per round trip), four times slower just below the level
    that was last refused: a provider with an unknown limit is used up to that limit with few
    refusals, and a limit that went up is found again."""

    SLOW_NEAR_REFUSAL = 4

    def __init__(self, ceiling=32):
        self.ceiling = int(ceiling)
        self.limit = self.ceiling
        self.in_flight = 0
        self.refused_at = None  # the window the provider last refused
        self.confirmed = 0  # the most calls in flight the provider answered since the last decrease
        self._since_forgiven = 0
        self._answers = 0
        self._cond = threading.Condition()
        self.answered = self.refused = 0

    def acquire(self, stop):
        """Wait for a place in the window; returns the calls in flight with this one."""
        with self._cond:
            while self.in_flight >= self.limit:
                if stop.is_set():
                    raise Interrupted()
                self._cond.wait(0.05)
            if stop.is_set():
                raise Interrupted()
            self.in_flight += 1
            return self.in_flight

    def release(self, outcome, sent_with):
        """outcome: "ok" (an answer), "refused" (429), or anything else (no signal)."""
        with self._cond:
            self.in_flight -= 1
            if outcome == "refused":
                self.refused += 1
                if sent_with <= self.confirmed and self._since_forgiven >= self.limit:
                    # The provider has been answering this many in flight: most likely it had
                    # not yet counted off a call that just ended. Forgiven, once per window of
                    # answers; refusals more often than that count.
                    self._since_forgiven = 0
                else:
                    new = max(1, min(self.limit, sent_with - 1))
                    if new < self.limit:
                        self.limit, self._answers = new, 0
                    self.confirmed = min(self.confirmed, self.limit)
                    self.refused_at = self.limit + 1  # the level the provider refused
            elif outcome == "ok":
                self.answered += 1
                self.confirmed = max(self.confirmed, sent_with)
                self._since_forgiven += 1
                self._answers += 1
                near = self.refused_at is not None and self.limit + 1 >= self.refused_at
                if self.limit < self.ceiling and self._answers >= self.limit * (self.SLOW_NEAR_REFUSAL if near else 1):
                    self.limit, self._answers = self.limit + 1, 0
                    if self.refused_at is not None and self.limit > self.refused_at:
                        self.refused_at = None  # passed it without a refusal: the limit went up
            self._cond.notify_all()


_WINDOWS = {}
_WINDOWS_LOCK = threading.Lock()


def window_for(scope, ceiling=32):
    """The process's window for one provider endpoint (see limiter_scope)."""
    with _WINDOWS_LOCK:
        w = _WINDOWS.get(scope)
        if w is None:
            w = _WINDOWS[scope] = AdaptiveWindow(ceiling)
        return w


class ProviderGate:
    """Runs AI calls under the shared limits; one per job, used by all its call threads.
    `window` (AdaptiveWindow) bounds the calls in flight to the provider; `note(message)`
    receives one line per wait or retry, for the run's log."""

    def __init__(self, limiter, stop, max_attempts=3, pause_after=600.0, backoff_base=0.5, window=None, note=None):
        self.limiter, self.stop = limiter, stop or threading.Event()
        self.max_attempts = max(1, int(max_attempts))
        self.pause_after = float(pause_after)
        self.backoff_base = backoff_base
        self.window = window
        self.note = note or (lambda message: None)
        self.last_ok = time.monotonic()
        self.rate_limited = 0  # 429s seen (for logs and the benchmark)

    def _wait_turn(self):
        while True:
            if self.stop.is_set():
                raise Interrupted()
            wait = self.limiter.delay()
            if wait <= 0:
                return
            metrics.ai_rate_limited()  # automation_ai_rate_limited_total: one per wait for a turn
            # A little jitter: calls released by the same block do not all hit at once.
            if self.stop.wait(wait + random.uniform(0, min(0.01, wait / 20))):
                raise Interrupted()

    def _send(self, fn):
        """(result, calls in flight with it): fn() inside the window, if there is one."""
        if self.window is None:
            return fn(), 0
        sent_with = self.window.acquire(self.stop)
        outcome = None
        try:
            result = fn()
            outcome = "ok"
            return result, sent_with
        except RateLimited as e:
            outcome = "refused"
            e.sent_with = sent_with
            raise
        finally:
            self.window.release(outcome, sent_with)

    def call(self, fn):
        refused_since, refusals, failures = None, 0, 0
        while True:
            self._wait_turn()
            try:
                result, _ = self._send(fn)
            except RateLimited as e:
                self.rate_limited += 1
                now = time.monotonic()
                refused_since = refused_since or now
                # Refusing "for pause_after seconds": since this call's first 429 and since
                # the last success of any call of this job (others may still get through).
                if now - max(refused_since, self.last_ok) >= self.pause_after:
                    raise RateLimitExhausted(f"AI provider kept answering HTTP 429 for "
                                             f"{int(self.pause_after)} s") from e
                refusals += 1
                wait = e.retry_after if e.retry_after is not None else backoff(refusals, self.backoff_base)
                wait = min(wait, self.pause_after)
                self.note(f"provider rate limit: waiting {wait:.1f} s (429)")
                if getattr(e, "sent_with", 0) > 1:
                    # Refused with other calls in flight: the window answers it (fewer in
                    # flight); this call waits its turn alone, the others go on.
                    if self.stop.wait(wait):
                        raise Interrupted()
                else:  # refused alone (a rate, not a concurrency limit): every call waits it out
                    self.limiter.block(wait)
                continue
            except ProviderUnavailable as e:
                failures += 1
                if failures >= self.max_attempts:
                    raise
                delay = backoff(failures, self.backoff_base)
                self.note(f"provider error: retrying in {delay:.1f} s ({e})")
                if self.stop.wait(delay):
                    raise Interrupted()
                continue
            self.last_ok = time.monotonic()
            return result
