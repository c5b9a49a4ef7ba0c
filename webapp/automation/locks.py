"""Redis locks, always with a TTL (a dead holder must never block a site forever).

- site lock `automation:site:<id>:lock`: held from start to finish by the run (value
  "run:<id>"), renewed by the worker's heartbeat; the DB unique index is the final guard.
- exec lock `automation:run:<id>:exec`: the one worker job executing a run's batch.
"""
import uuid

# Compare-and-delete / compare-and-expire: only the owner may release or renew.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"


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

    def release(self):
        return bool(self.r.eval(_RELEASE, 1, self.key, self.token))

    def retoken(self, new_token):
        """Hand the lock to a new owner token (e.g. 'starting' -> 'run:42')."""
        if self.r.set(self.key, new_token, xx=True, px=self.ttl_ms):
            self.token = new_token
            return True
        return False

    def force(self):
        """Take the lock whoever holds it (a resumed run reclaims its site)."""
        self.r.set(self.key, self.token, px=self.ttl_ms)

    def held(self):
        return self.r.exists(self.key) == 1


def site_lock(client, site_id, ttl, run_id=None):
    return TTLLock(client, site_lock_key(site_id), ttl, token=f"run:{run_id}" if run_id else None)
