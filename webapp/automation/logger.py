"""Run logs: lines `<ISO time> [stage N] message`, numbered from 1, published on Redis pub/sub
for live tails. Where they are kept (a file per run, or a Redis Stream flushed to object
storage segments) is webapp/storage/logs.py's business; this module keeps the names its callers
use (`AutomationLogger`, `run_log`, `tail`, `line_count`, …).
"""
from datetime import datetime, timezone
from pathlib import Path

from flask import current_app

from ..errors import Gone
from ..storage import get_store
from ..storage.logs import (  # noqa: F401  (re-exported: callers import them from here)
    line_count, log_channel, open_run_log, read_after, read_before, read_from, tail)


def run_log_dir(log_dir, account_id, site_id, run_id):
    # Built from integer ids only: no user input reaches the path.
    return Path(log_dir) / str(int(account_id)) / str(int(site_id)) / str(int(run_id))


def run_log_path(log_dir, account_id, site_id, run_id):
    """The file of a run's log in the file layout (LOG_DIR); readers go through `run_log`."""
    return run_log_dir(log_dir, account_id, site_id, run_id) / "automation_run.log"


def _redis():
    from ..redis_conn import get_redis
    try:
        return get_redis()
    except RuntimeError:
        return None


def pruned_message(run):
    return (f"The log of run {run.id} was deleted by the retention policy on "
            f"{run.files_pruned_at:%Y-%m-%d} (logs and images are kept for a set number of days after a run "
            "ends); the run's record and stage results are kept.")


def check_log_kept(run):
    """Retention (webapp/automation/retention.py) deleted this run's log: Gone (410)."""
    if run.files_pruned_at is not None:
        raise Gone(pruned_message(run))


def run_log(run, redis_client=None):
    """The run's log (a RunLog, webapp/storage/logs.py) in the app's store."""
    return run_log_by_ids(run.account_id, run.site_id, run.id, redis_client)


def run_log_by_ids(account_id, site_id, run_id, redis_client=None):
    return open_run_log(get_store(), redis_client or _redis(), account_id, site_id, run_id)


class AutomationLogger:
    """Appends to one run's log. The file layout keeps its files open for the logger's life
    (a worker's job writes a line per item); `close()` releases them (and, with object
    storage, flushes the lines waiting in Redis when there are enough of them)."""

    def __init__(self, log_dir, run, redis_client=None):
        self.run_id = run.id
        store = get_store()
        self.redis = redis_client
        if self.redis is None and store.kind != "file":
            self.redis = _redis()  # the segmented layout numbers lines in Redis
        self.sink = open_run_log(store, self.redis, run.account_id, run.site_id, run.id,
                                 log_dir=log_dir if store.kind == "file" and log_dir != current_app.config["LOG_DIR"]
                                 else None)
        self.path = getattr(self.sink, "path", None)

    def close(self):
        self.sink.close()

    def __del__(self):
        try:  # only release open files here: a flush (network) does not belong in a finaliser
            if self.path is not None:
                self.sink.close()
        except Exception:
            pass

    def log(self, message, stage=None):
        ts = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        tag = f"[stage {stage}]" if stage else "[run]"
        line = f"{ts} {tag} {' '.join(str(message).split())}"
        return self.sink.append(line), line
