"""The live `current_processing` state, kept in Redis by the worker (cheap to read) and
published on a channel per run for websocket clients."""
import json
import logging

import redis

log = logging.getLogger(__name__)
STATE_TTL = 24 * 3600


def state_key(run_id):
    return f"automation:run:{int(run_id)}:processing"


def state_channel(run_id):
    return f"automation:run:{int(run_id)}:processing:events"


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
    pct = round(100.0 * processed / total, 1) if total else 100.0
    return {"stage_number": stage_number, "stage_name": stage_name, "total_items": total,
            "processed_items": processed, "percentage": min(pct, 100.0),
            "currently_processing": current, "up_next": up_next, "remaining_count": remaining}
