"""Redis locks, always with a TTL (a dead holder must never block a site forever).

- site lock `automation:site:<id>:lock`: held from start to finish by the run (value
  "run:<id>"), renewed by the worker's heartbeat; the DB unique index is the final guard.
- exec lock `automation:run:<id>:exec`: the one worker job executing a run's batch.
"""
import uuid

# Compare-and-delete / compare-and-expire: only the owner may release or renew.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
# Set-if-absent-or-ours: a worker renews its run's site lock without ever overwriting a lock
# taken meanwhile by a new start (the run may have been cancelled while its item ran).
_CLAIM = ("local v = redis.call('get', KEYS[1]) "
          "if v == false or v == ARGV[1] then return redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) "
          "else return false end")
# Compare-and-set: replace exactly the holder we judged stale, not whoever holds it now.
_REPLACE = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
            "return redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3]) else return false end")


def site_lock_key(site_id):
    return f"automation:site:{int(site_id)}:lock"


def exec_lock_key(run_id):
    return f"automation:run:{int(run_id)}:exec"


class TTLLock:
    def __init__(self, client, key, ttl_seconds, token=None):
        self.r, self.key, self.ttl_ms = client, key, int(ttl_seconds * 1000)
        self.token = token or uuid.uuid4().hex

    def acquire(self):
        return bool(self.r.set(self.key, self.token, nx=True, px=self.ttl_ms))

    def renew(self):
        return bool(self.r.eval(_RENEW, 1, self.key, self.token, self.ttl_ms))

    def hold(self):
        """Renew the lease, or take the lock back if it lapsed and nobody took it: False only
        when another holder has it."""
        return self.renew() or self.acquire()

    def release(self):
        return bool(self.r.eval(_RELEASE, 1, self.key, self.token))

    def retoken(self, new_token):
        """Hand the lock to a new owner token (e.g. 'starting' -> 'run:42')."""
        if self.r.set(self.key, new_token, xx=True, px=self.ttl_ms):
            self.token = new_token
            return True
        return False

    def claim(self):
        """Take the lock if it is free or already ours; never take it from another holder."""
        return bool(self.r.eval(_CLAIM, 1, self.key, self.token, self.ttl_ms))

    def replace(self, stale_holder):
        """Take the lock from `stale_holder` (a value read a moment ago), atomically."""
        return bool(self.r.eval(_REPLACE, 1, self.key, stale_holder, self.token, self.ttl_ms))

    def holder(self):
        value = self.r.get(self.key)
        return value.decode() if value is not None else None

    def force(self):
        """Take the lock whoever holds it (a resumed run reclaims its site)."""
        self.r.set(self.key, self.token, px=self.ttl_ms)

    def held(self):
        return self.r.exists(self.key) == 1


def site_lock(client, site_id, ttl, run_id=None):
    return TTLLock(client, site_lock_key(site_id), ttl, token=f"run:{run_id}" if run_id else None)


def site_lock_ttl(app=None):
    """The site lock's lease: renewed by the run's heartbeat, so it outlives a stale check."""
    from flask import current_app
    return max(30, (app or current_app).config["STALE_RUN_SECONDS"] * 2)
