"""A per-site number that every change to the site's pending items bumps after it commits (an
import, a review decision): cached counts keyed on it become misses at once
(webapp/automation/countcache.py reads it). A floor of its own, so the rooms that make such
changes (planner, writer) bump it without importing the engine."""
from .redis_conn import get_redis

GEN_KEY = "automation:counts:gen:{site_id}"


def generation(site_id):
    """The site's count generation (0 when Redis is away: then nothing is cached either)."""
    try:
        raw = get_redis().get(GEN_KEY.format(site_id=int(site_id)))
        return int(raw or 0)
    except Exception:
        return 0


def changed(site_id):
    """Call after committing a change to the site's pending items (import, review decision)."""
    try:
        r = get_redis()
        key = GEN_KEY.format(site_id=int(site_id))
        r.incr(key)
        r.expire(key, 7 * 86400)  # an idle site's counter may go; its cached counts are gone by then
    except Exception:  # Redis away: the counts are not cached either
        pass
