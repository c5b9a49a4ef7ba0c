"""Fair dispatch: which pipeline job a free worker gets next, when several accounts have work.

RQ stays the executor: workers pop the pipeline queue (`RQ_QUEUE`) as always. What changes is
how jobs reach that list. A run's job is created by RQ as usual (status, meta, timeout) but
its id goes to its *account's* ready list (`automation:fair:ready:<account>`); the queue RQ
pops holds at most `DEPTH` jobs, topped up from the ready lists in fair order:

- the account with the least virtual time goes first. An account's virtual time grows by the
  worker seconds its jobs take divided by its `weight` (an estimate when the job is handed
  out, corrected when it ends), so an account with 50 sites gets the same share as one with
  one site, and weight 2 gets twice the share;
- an account that was idle re-enters at the current floor (the virtual time of the last job
  handed out): being idle earns no credit to spend later, so "least worker time *recently*";
- within an account its runs take turns: each job queues its successor at the end of the
  account's list (FIFO), so the account's runs rotate.

Everything that moves ids between lists is one Lua script (atomic in Redis), so two web
processes and any number of workers cannot hand out a job twice or lose one. The list is
topped up when a job is queued, when a job starts and when it ends (tasks.py), and by idle
workers before they block (worker.py): a free worker never waits for a job that is ready.

This module knows Redis and job ids only; it knows nothing of runs, stages or the database
(`jobs.py` queues through it, `tasks.py` reports times, `limits.py` decides which runs may
have jobs at all).
"""
import re
import time

from rq import Queue

PREFIX = "automation:fair:"
WAITING = PREFIX + "waiting"   # zset: account -> virtual time, for accounts with ready jobs
VTIME = PREFIX + "vtime"       # hash: account -> virtual time (kept while idle)
WEIGHT = PREFIX + "weight"     # hash: account -> weight
FLOOR = PREFIX + "floor"       # virtual time of the last job handed out
LATER = PREFIX + "later"       # zset: "<account>|<job id>" -> when it is due (ms, Redis's clock)
DEPTH = 1                      # jobs waiting in RQ's own list (the rest wait in ready lists)
ESTIMATE = 1.0                 # worker seconds charged when a job is handed out (corrected at its end)

_JOB_ACCOUNT = re.compile(r"-a(\d+)-")
# A run's latest job id lives at RUN_JOB_PREFIX + run id + RUN_JOB_SUFFIX (jobs.job_key).
RUN_JOB_PREFIX, RUN_JOB_SUFFIX = "automation:run:", ":job"


def ready_key(account_id):
    return f"{PREFIX}ready:{int(account_id)}"


def account_of(job_id):
    """The account a pipeline job id belongs to (ids made by `job_id`), or None."""
    m = _JOB_ACCOUNT.search(job_id or "")
    return int(m.group(1)) if m else None


def job_id(run_id, account_id, suffix):
    return f"automation-run-{int(run_id)}-a{int(account_id)}-{suffix}"


# KEYS: rq list, waiting, vtime, weight, floor, later. ARGV: depth, ready prefix, estimate,
# [account, weight, job id, delay ms] to push one job first (empty account = top up only).
# A job pushed with a delay waits in `later` (by the time it is due, Redis's clock) and joins
# its account's ready list at the first top-up after that: a run's pause between batches or
# stages costs no worker (a job used to sleep through it, holding one).
_SCRIPT = """
local rq, waiting, vtime, weights, floorkey, later = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local depth, prefix, estimate = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local acct = ARGV[4]
local delay = tonumber(ARGV[7] or '0') or 0
local function ready(a, job)
  redis.call('RPUSH', prefix .. a, job)
  if not redis.call('ZSCORE', waiting, a) then
    local v = tonumber(redis.call('HGET', vtime, a) or '0')
    local floor = tonumber(redis.call('GET', floorkey) or '0')
    if v < floor then v = floor end
    redis.call('HSET', vtime, a, v)
    redis.call('ZADD', waiting, v, a)
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if acct and acct ~= '' then
  if ARGV[5] ~= '' then redis.call('HSET', weights, acct, ARGV[5]) end
  if delay > 0 then
    redis.call('ZADD', later, now + delay, acct .. '|' .. ARGV[6])
  else
    ready(acct, ARGV[6])
  end
end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', later, '-inf', now, 'LIMIT', 0, 1000)) do
  redis.call('ZREM', later, m)
  local sep = string.find(m, '|', 1, true)
  ready(string.sub(m, 1, sep - 1), string.sub(m, sep + 1))
end
local moved = 0
while redis.call('LLEN', rq) < depth do
  local top = redis.call('ZRANGE', waiting, 0, 0, 'WITHSCORES')
  if #top == 0 then break end
  local a, score = top[1], top[2]
  local job = redis.call('LPOP', prefix .. a)
  if job then
    redis.call('RPUSH', rq, job)
    redis.call('SET', floorkey, score)
    local w = tonumber(redis.call('HGET', weights, a) or '1')
    if not w or w <= 0 then w = 1 end
    local v = redis.call('HINCRBYFLOAT', vtime, a, estimate / w)
    if redis.call('LLEN', prefix .. a) > 0 then
      redis.call('ZADD', waiting, v, a)
    else
      redis.call('ZREM', waiting, a)
    end
    moved = moved + 1
  else
    redis.call('ZREM', waiting, a)
  end
end
return moved
"""

# KEYS: vtime, waiting, weight. ARGV: account, seconds - estimate.
_CHARGE = """
local w = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '1')
if not w or w <= 0 then w = 1 end
local d = tonumber(ARGV[2]) / w
local v = redis.call('HINCRBYFLOAT', KEYS[1], ARGV[1], d)
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then redis.call('ZADD', KEYS[2], v, ARGV[1]) end
return v
"""

# KEYS: waiting, rq list, vtime. ARGV: account. 1 when another account whose turn comes
# before this one's (virtual time not above it) waits for a worker.
_CONTENDED = """
local mine = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
local top = redis.call('ZRANGE', KEYS[1], 0, 1, 'WITHSCORES')
for i = 1, #top, 2 do
  if top[i] ~= ARGV[1] and tonumber(top[i + 1]) <= mine then return 1 end
end
for _, id in ipairs(redis.call('LRANGE', KEYS[2], 0, 4)) do
  local a = string.match(id, '%-a(%d+)%-')
  if a ~= ARGV[1] then
    if not a then return 1 end
    if tonumber(redis.call('HGET', KEYS[3], a) or '0') <= mine then return 1 end
  end
end
return 0
"""

# KEYS: waiting, rq list. ARGV: ready prefix, account, job id, run-key prefix, run-key suffix.
# Returns {where, runs ahead}: where 0 = not waiting (running or gone), 1 = in RQ's list,
# 2 = in its account's ready list. Ahead counts the jobs of *other accounts' active runs*
# that a worker takes first, one per run: a job is its run's only if it is the run's latest
# (`automation:run:<id>:job`, which a cancel deletes), so leftovers of cancelled runs and a
# run's superseded duplicates do not count, nor do this account's own runs.
_POSITION = """
local mine_acct = ARGV[2]
local function counts(id)
  local a = string.match(id, '%-a(%d+)%-')
  if a == mine_acct then return false end
  local run = string.match(id, '^automation%-run%-(%d+)%-')
  if not run then return true end
  return redis.call('GET', ARGV[4] .. run .. ARGV[5]) == id
end
local function live(ids, cap)
  local n = 0
  for _, id in ipairs(ids) do
    if n >= cap then break end
    if counts(id) then n = n + 1 end
  end
  return n
end
local pos = redis.call('LPOS', KEYS[2], ARGV[3])
if pos then
  if pos == 0 then return {1, 0} end
  return {1, live(redis.call('LRANGE', KEYS[2], 0, pos - 1), pos)}
end
local mine = ARGV[1] .. mine_acct
pos = redis.call('LPOS', mine, ARGV[3])
if not pos then return {0, 0} end
local ahead = live(redis.call('LRANGE', KEYS[2], 0, -1), 1e9)
local score = redis.call('ZSCORE', KEYS[1], mine_acct)
if score then
  for _, a in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', score)) do
    if a ~= mine_acct then ahead = ahead + live(redis.call('LRANGE', ARGV[1] .. a, 0, -1), pos + 1) end
  end
end
return {2, ahead}
"""

_scripts = {}


def _script(client, name, body):
    key = (id(client), name)
    s = _scripts.get(key)
    if s is None:
        s = _scripts[key] = client.register_script(body)
    return s


def _keys(queue_key):
    return [queue_key, WAITING, VTIME, WEIGHT, FLOOR, LATER]


class FairQueue(Queue):
    """An RQ queue whose jobs wait in their account's ready list until fair dispatch hands
    them to RQ's list (everything else about the job is RQ's own: status, meta, timeouts)."""

    def __init__(self, name, account_id, weight=None, delay=0, **kwargs):
        super().__init__(name, **kwargs)
        # weight None: keep the one recorded by the run's first job (service.start)
        self.account_id, self.weight = int(account_id), ("" if weight is None else float(weight))
        self.delay_ms = max(0, int(round(float(delay or 0) * 1000)))  # ready only after this

    def push_job_id(self, job_id, pipeline=None, at_front=False):
        client = pipeline if pipeline is not None else self.connection
        # RQ calls this inside its enqueue pipeline; the script runs in the same MULTI.
        _script(self.connection, "fair", _SCRIPT)(
            keys=_keys(self.key),
            args=[DEPTH, PREFIX + "ready:", ESTIMATE, self.account_id, self.weight, job_id, self.delay_ms],
            client=client)


def top_up(client, queue_name):
    """Hand ready jobs to RQ's list until it holds DEPTH (call when a worker frees or starts)."""
    return _script(client, "fair", _SCRIPT)(keys=_keys(Queue(queue_name, connection=client).key),
                                            args=[DEPTH, PREFIX + "ready:", ESTIMATE, ""], client=client)


def charge(client, account_id, seconds):
    """A job of `account_id` took `seconds` of a worker: correct the estimate charged at hand-out."""
    return float(_script(client, "charge", _CHARGE)(keys=[VTIME, WAITING, WEIGHT],
                                                     args=[int(account_id), float(seconds) - ESTIMATE]))


def contended(client, queue_name, account_id):
    """True when another account whose turn comes first (least virtual time) waits for a worker:
    a job slice ends at its next batch boundary then, instead of running on for
    JOB_SLICE_SECONDS. An account behind this one waiting does not end its slice."""
    return bool(_script(client, "contended", _CONTENDED)(
        keys=[WAITING, Queue(queue_name, connection=client).key, VTIME], args=[int(account_id)]))


def position(client, queue_name, account_id, job_id_):
    """(waiting, runs of other accounts ahead) of a job: waiting False once a worker has it."""
    where, ahead = _script(client, "position", _POSITION)(
        keys=[WAITING, Queue(queue_name, connection=client).key],
        args=[PREFIX + "ready:", int(account_id), job_id_, RUN_JOB_PREFIX, RUN_JOB_SUFFIX])
    return bool(where), int(ahead)


def withdraw(client, account_id, job_id_):
    """Take a job out of its account's ready list or the delayed set (its run was cancelled):
    True when it was still in one. A job already handed to RQ's list stays (it finds its run
    ended)."""
    pipe = client.pipeline()
    pipe.lrem(ready_key(account_id), 0, job_id_)
    pipe.zrem(LATER, f"{int(account_id)}|{job_id_}")
    return any(pipe.execute())


def set_weight(client, account_id, weight):
    client.hset(WEIGHT, int(account_id), float(weight or 1.0))


def backlog(client):
    """{account_id: jobs in its ready list} for the accounts with work waiting (for /ops)."""
    accounts = [int(a) for a in client.zrange(WAITING, 0, -1)]
    if not accounts:
        return {}
    pipe = client.pipeline()
    for a in accounts:
        pipe.llen(ready_key(a))
    return dict(zip(accounts, pipe.execute()))


def waiting_jobs(client, queue_name):
    """Every job id waiting for a worker: RQ's list, each account's ready list, then the
    delayed ones (not due yet) in the order they come due."""
    q = Queue(queue_name, connection=client)
    ids = [j.decode() for j in client.lrange(q.key, 0, -1)]
    for a in client.zrange(WAITING, 0, -1):
        ids += [j.decode() for j in client.lrange(ready_key(int(a)), 0, -1)]
    return ids + [m.decode().split("|", 1)[1] for m in client.zrange(LATER, 0, -1)]


def next_due_in(client):
    """Seconds until the first delayed job comes due (0 when one is due now), None if none."""
    first = client.zrange(LATER, 0, 0, withscores=True)
    if not first:
        return None
    sec, usec = client.time()
    return max(0.0, (first[0][1] - (sec * 1000 + usec // 1000)) / 1000.0)


class Timer:
    """Worker seconds of one job, charged to its account when it ends (tasks.py)."""

    def __init__(self, client, account_id):
        self.client, self.account_id, self.t0 = client, account_id, time.monotonic()

    def done(self):
        if self.account_id is not None:
            charge(self.client, self.account_id, time.monotonic() - self.t0)
