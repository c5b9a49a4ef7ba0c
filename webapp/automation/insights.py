"""Run insights: how long (durations, active and paused time), how far (ETA) and when
(the timeline). Pure functions over a run, its audit events and counts read by the caller,
so the API, the pages and the live snapshot all compute them the same way.

Time rules:
- a pause is the interval between a `pause` event (the user's or the worker's automatic one)
  and the next `resume`, or the run's end; a run paused right now is paused until `now`;
- `active_seconds` + `paused_seconds` = the run's wall time (start to end, or to now);
- a stage's `duration_seconds` is its wall time (started_at to finished_at, or to the run's
  end / now while it runs) minus the pauses inside it;
- `eta_seconds` (running runs only) is null until some pace is known (the current stage
  finished an item, or the site's recent runs ran this stage, or any stage so far: their
  average, so the ETA does not go back to "estimating…" at a stage boundary): the current stage's remaining
  items at that rate, plus the later stages' items
  (pending now, and what the earlier stages will produce, by the estimate's planning figures)
  at the rate this run observed for them, else the site's recent runs, else the current rate;
  plus the configured delays.
"""
import math
from datetime import datetime

from markupsafe import Markup, escape

from ..ai.local import IMAGES_PER_CONTENT
from ..models.base import utcnow
from .costs import KEYWORDS_PER_CLUSTER

STAGE_COUNT = 7
PAUSE_CLOSERS = ("resume", "cancel", "fail", "complete")


def parse_time(value):
    """A stage result's ISO time ("...Z") as the naive UTC datetime the models use."""
    if not value:
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value.rstrip("Z"))


def run_end(run):
    """When a finished run ended (None while active)."""
    if run.status in ("running", "paused"):
        return None
    ended = getattr(run, "ended_at", None)
    if ended:
        return ended
    if run.status == "cancelled":
        return run.cancelled_at or run.completed_at
    return run.completed_at or run.cancelled_at or run.heartbeat_at


def pause_intervals(run, events, now=None):
    """[(start, end)] of the run's pauses, from its audit events (in id order)."""
    now = now or utcnow()
    end = run_end(run)
    out, opened = [], None
    for e in events:
        if e.action == "pause" and opened is None:
            opened = e.created_at
        elif e.action in PAUSE_CLOSERS and opened is not None:
            out.append((opened, e.created_at))
            opened = None
    if opened is None and run.status == "paused" and run.paused_at:
        opened = run.paused_at  # paused before pauses were recorded as events
    if opened is not None:
        out.append((opened, end or now))
    return out


INTERRUPT_CLOSERS = ("recover", "continue", "cancel", "fail", "complete")


def interrupt_intervals(run, events, now=None):
    """[(start, end)] when no worker held the running run: from an `interrupt` event (a clean
    stop, or a lost worker's last heartbeat, recorded by the recovery) to the `recover` or
    `continue` that ended it (or the run's end, or now)."""
    now = now or utcnow()
    out, opened = [], None
    for e in sorted(events, key=lambda e: (e.created_at, e.id or 0)):
        if e.action == "interrupt" and opened is None:
            opened = e.created_at
        elif e.action in INTERRUPT_CLOSERS and opened is not None:
            out.append((opened, e.created_at))
            opened = None
    if opened is not None:
        out.append((opened, run_end(run) or now))
    return out


def _seconds(a, b):
    return max(0.0, (b - a).total_seconds())


def paused_within(intervals, start, end):
    return sum(_seconds(max(a, start), min(b, end)) for a, b in intervals if min(b, end) > max(a, start))


def interrupted_within(interrupts, pauses, start, end):
    """Seconds of `interrupts` within [start, end] that are not also paused."""
    total = 0.0
    for a, b in interrupts:
        a, b = max(a, start), min(b, end)
        if b > a:
            total += _seconds(a, b) - paused_within(pauses, a, b)
    return max(0.0, total)


def run_times(run, intervals, now=None, events=None):
    """{"active_seconds", "paused_seconds", "interrupted_seconds"} of a run (to now while it
    is active): working time excludes the pauses and the time no worker held it (`events`)."""
    now = now or utcnow()
    end = run_end(run) or now
    start = run.started_at or end
    paused = paused_within(intervals, start, end)
    interrupted = interrupted_within(interrupt_intervals(run, events or [], now), intervals, start, end)
    return {"active_seconds": round(max(0.0, _seconds(start, end) - paused - interrupted), 1),
            "paused_seconds": round(paused, 1), "interrupted_seconds": round(interrupted, 1)}


def stage_duration(run, result, intervals, now=None):
    """Seconds stage `result` has been working (pauses excluded); None before it starts."""
    if not result or not result.get("started_at"):
        return None
    start = parse_time(result["started_at"])
    end = parse_time(result.get("finished_at")) or run_end(run) or now or utcnow()
    return round(max(0.0, _seconds(start, end) - paused_within(intervals, start, end)), 1)


def stage_results(run, intervals, now=None):
    """{n: the stage result with duration_seconds} for every stage that started."""
    out = {}
    for n in range(1, STAGE_COUNT + 1):
        r = run.stage_result(n)
        if r:
            out[n] = {**r, "duration_seconds": stage_duration(run, r, intervals, now)}
    return out


def done_items(result):
    return (result.get("items_processed") or 0) + (result.get("items_failed") or 0) if result else 0


def projected_items(p):
    """Items each stage will see, from the pending counts `p` (service.pending_counts) and the
    estimate's planning figures: what stage n has pending plus what stages < n will produce."""
    kw = p["keywords"]
    new_clusters = math.ceil(kw / KEYWORDS_PER_CLUSTER) if kw else 0
    new_ideas = math.ceil(kw / 2 + new_clusters / 2) if kw else 0
    ideas = p["ideas"] + p["ideas_from_clusters"] + new_ideas
    articles = p["tasks"] + ideas
    prompts = p["drafts"] + articles
    return {1: kw, 2: p["clusters"] + new_clusters, 3: ideas, 4: articles, 5: prompts,
            6: p["images"] + prompts * IMAGES_PER_CONTENT, 7: p.get("review", 0) + prompts}


def observed_rates(runs):
    """Seconds per item for each stage over finished runs' results (wall time: pauses in
    finished stages are rare and the figure is only a fallback)."""
    secs, items = {}, {}
    for run in runs:
        for n in range(1, STAGE_COUNT + 1):
            r = run.stage_result(n)
            if not r or not r.get("finished_at") or not done_items(r):
                continue
            s = _seconds(parse_time(r["started_at"]), parse_time(r["finished_at"]))
            secs[n] = secs.get(n, 0.0) + s
            items[n] = items.get(n, 0) + done_items(r)
    return {n: secs[n] / items[n] for n in secs}


def eta_seconds(run, results, projected, history_rates, cfg):
    """Seconds until the run completes, or None while unknown (see the module doc)."""
    if run.status != "running":
        return None
    n = run.current_stage
    cur = results.get(n)
    own = {k: r["duration_seconds"] / done_items(r) for k, r in results.items()
           if k != n and done_items(r) and r.get("duration_seconds")}
    if cur and done_items(cur) and cur.get("duration_seconds") is not None:
        rate = cur["duration_seconds"] / done_items(cur)
    elif n in history_rates:  # a stage just started: the site's recent runs know its pace
        rate = history_rates[n]
    elif own or history_rates:
        # Never seen this stage: the pace of the stages seen so far (this run's, else the
        # site's), rather than "estimating…" again at every stage boundary.
        known = list(own.values()) or list(history_rates.values())
        rate = sum(known) / len(known)
    else:
        return None
    remaining = {n: max(0, (cur.get("items_total") or 0) - done_items(cur)) if cur else projected.get(n, 0)}
    for k in range(n + 1, STAGE_COUNT + 1):
        remaining[k] = projected.get(k, 0)
    total = 0.0
    for k, items in remaining.items():
        if not items:
            continue
        r = results.get(k)
        k_rate = (rate if k == n else
                  r["duration_seconds"] / done_items(r) if r and done_items(r) and r.get("duration_seconds") else
                  history_rates.get(k, rate))
        total += items * k_rate
        if cfg is not None and k <= 6 and cfg.within_stage_delay:
            total += (math.ceil(items / cfg.batch_size(k)) - 1) * cfg.within_stage_delay
    if cfg is not None and cfg.between_stage_delay:
        total += (STAGE_COUNT - n) * cfg.between_stage_delay
    return int(math.ceil(total))


# -- the timeline -----------------------------------------------------------------------------
EVENT_LABELS = {"start": "started", "pause": "paused", "resume": "resumed", "cancel": "cancelled",
                "recover": "recovered", "fail": "failed", "complete": "completed",
                "interrupt": "interrupted", "continue": "continued"}


def timeline_svg(run, results, intervals, events, stage_names, now=None):
    """The run's stages as bars on a time axis, pauses shaded, events marked. Positions are
    percentages of the SVG's width and text is in pixels, so it fills any container and its
    labels stay the same readable size at 420 px as at 1400 px (labels sit above the bars).
    No inline styles (CSP): classes from app.css and plain attributes."""
    now = now or utcnow()
    start = run.started_at
    end = run_end(run) or now
    span = max(1.0, _seconds(start, end))

    def x(t):  # percent of the width, inside a 1% margin
        return 1 + 98 * min(1.0, max(0.0, _seconds(start, t) / span))

    row_h, top = 34, 4
    rows = list(range(1, STAGE_COUNT + 1))
    chart_bottom = top + row_h * len(rows)
    height = chart_bottom + 30
    desc = []
    for n in rows:
        r = results.get(n)
        if r:
            desc.append(f"stage {n} {r.get('status') or 'running'}"
                        + (f" {fmt_seconds(r.get('duration_seconds'))}" if r.get("duration_seconds") is not None else ""))
    out = [f'<svg class="timeline" width="100%" height="{height}" role="img" '
           f'aria-labelledby="timeline-title-{run.id} timeline-desc-{run.id}" xmlns="http://www.w3.org/2000/svg">',
           f'<title id="timeline-title-{run.id}">Timeline of run {run.id}</title>',
           f'<desc id="timeline-desc-{run.id}">{escape("; ".join(desc) or "no stage started yet")}</desc>']
    for a, b in intervals:
        x0, x1 = x(a), x(min(b, end))
        out.append(f'<rect class="tl-pause" x="{x0:.2f}%" y="{top}" width="{max(0.4, x1 - x0):.2f}%" '
                   f'height="{chart_bottom - top}"><title>paused {escape(fmt_seconds(_seconds(a, b)))}</title></rect>')
    for i, n in enumerate(rows):
        y = top + i * row_h
        r = results.get(n)
        name = stage_names.get(n, f"Stage {n}")
        if not r:
            out.append(f'<text class="tl-label tl-muted" x="1%" y="{y + 13}">{n}. {escape(name)} · not started</text>')
            continue
        status = r.get("status") or "running"
        if status == "running" and run.status != "running":
            status = run.status
        s = parse_time(r.get("started_at")) or start
        f = parse_time(r.get("finished_at")) or end
        x0, x1 = x(s), x(f)
        dur = r.get("duration_seconds")
        label = f"{n}. {name} · {status}" + (f" · {fmt_seconds(dur)}" if dur is not None else "")
        out.append(f'<text class="tl-label" x="1%" y="{y + 13}">{escape(label)}</text>')
        tip = escape(f"{name}: {status}, {done_items(r)} items" + (f", {fmt_seconds(dur)}" if dur is not None else ""))
        if status == "skipped":  # nothing pending: a hollow dashed marker, not a full bar
            out.append(f'<rect class="tl-bar tl-skipped" x="{x0:.2f}%" y="{y + 18}" width="{max(1.2, x1 - x0):.2f}%" '
                       f'height="10" rx="2"><title>{tip}</title></rect>')
        else:
            out.append(f'<rect class="tl-bar tl-{escape(status)}" x="{x0:.2f}%" y="{y + 18}" '
                       f'width="{max(0.5, x1 - x0):.2f}%" height="10" rx="2"><title>{tip}</title></rect>')
    for e in events:
        if e.action not in EVENT_LABELS or e.created_at is None:
            continue
        ex = x(e.created_at)
        tip = escape(f"{EVENT_LABELS[e.action]} by {e.actor} at {e.created_at:%Y-%m-%d %H:%M:%S} UTC"
                     + (f": {e.reason}" if e.reason else ""))
        out.append(f'<g class="tl-event tl-event-{escape(e.action)}"><line x1="{ex:.2f}%" x2="{ex:.2f}%" y1="{top}" '
                   f'y2="{chart_bottom}"/><circle cx="{ex:.2f}%" cy="{chart_bottom + 5}" r="4"/>'
                   f'<title>{tip}</title></g>')
    axis_y = chart_bottom + 25
    out.append(f'<text class="tl-axis" x="1%" y="{axis_y}">{start:%H:%M:%S} UTC</text>')
    out.append(f'<text class="tl-axis" x="99%" y="{axis_y}" text-anchor="end">'
               f'{"now" if run_end(run) is None else f"{end:%H:%M:%S} UTC"} · {escape(fmt_seconds(span))}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def fmt_seconds(seconds):
    """12 s · 4 min 05 s · 2 h 03 min."""
    if seconds is None:
        return ""
    if seconds < 1:
        return "< 1 s"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
