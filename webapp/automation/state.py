"""The live `current_processing` state, kept in Redis by the worker (cheap to read) and
published on a channel per run for websocket clients."""
import json
import logging

import redis

from ..redis_conn import channel_namespace

log = logging.getLogger(__name__)
STATE_TTL = 24 * 3600


def state_key(run_id):
    return f"automation:run:{int(run_id)}:processing"


def state_channel(run_id):
    # In this installation's namespace (the Redis database's number): pub/sub spans databases.
    return f"{channel_namespace()}run:{int(run_id)}:processing:events"


def publish_state(client, run_id, state):
    try:
        payload = json.dumps(state)
        pipe = client.pipeline(transaction=False)
        if state is None:
            pipe.delete(state_key(run_id))
        else:
            pipe.set(state_key(run_id), payload, ex=STATE_TTL)
        pipe.publish(state_channel(run_id), payload)
        pipe.execute()
    except redis.RedisError as e:  # live state is best effort; the DB holds the truth
        log.warning("processing state publish failed for run %s: %s", run_id, e)


def read_state(client, run_id):
    raw = client.get(state_key(run_id))
    return json.loads(raw) if raw else None


def build_state(stage_number, stage_name, total, processed, current, up_next, remaining):
    """`status` is "starting" until the stage has counted its items (total 0): a stage that has
    not begun is 0 %, never 100 % of 0/0."""
    starting = not total
    pct = 0.0 if starting else min(round(100.0 * processed / total, 1), 100.0)
    return {"stage_number": stage_number, "stage_name": stage_name, "status": "starting" if starting else "processing",
            "total_items": total, "processed_items": processed, "percentage": pct,
            "currently_processing": current, "up_next": up_next, "remaining_count": remaining}


def percent(done, total):
    """Progress as shown everywhere (API, site page, run page, dashboard): one decimal,
    rounded down so a stage never shows 100 % before its last item, 0 while not counted."""
    if not total:
        return 0.0
    return min(100.0, int(1000 * done / total) / 10)


def reconcile(run, stage_name, state):
    """The processing state of a running run, with every number taken from the run row (the
    stage result the worker commits with each item) and only the item names from the live
    state: the \"Now\" line can never disagree with the stage table beside it, nor show a
    stage the table has not reached. Names from another stage (a late message) are dropped."""
    n = run.current_stage
    res = run.stage_result(n) or {}
    same = bool(state) and state.get("stage_number") == n
    total = res.get("items_total") or 0
    processed, failed = res.get("items_processed") or 0, res.get("items_failed") or 0
    starting = not res or not total
    return {"stage_number": n, "stage_name": stage_name, "status": "starting" if starting else "processing",
            "total_items": total, "processed_items": processed, "failed_items": failed,
            "percentage": percent(processed + failed, total),
            "currently_processing": list(state.get("currently_processing") or []) if same and not starting else [],
            "up_next": list(state.get("up_next") or []) if same else [],
            "remaining_count": max(0, total - processed - failed)}
