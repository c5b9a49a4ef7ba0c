"""Keyword import: JSON rows or CSV text, validated row by row, inserted all-or-nothing
per valid set (a malformed file imports nothing, nor one that would exceed the site's
keyword quota: webapp/quotas.py).

The web process is gevent's: one greenlet that computes for a second stops every request of
the process for that second. So every step here works in chunks of CHUNK rows and yields
(`pause()`) between them, and an import of more than IMPORT_SYNC_MAX_ROWS rows does not run
in the request at all (webapp/imports.py queues it as a background job).
"""
import csv
import io
import time

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from .errors import BadRequest
from .extensions import db
from .models import Keyword

MAX_KEYWORD = 255
MAX_ROWS = 50_000
CHUNK = 500


def pause():
    # Under gevent's monkey patching time.sleep(0) lets other greenlets run (gevent.sleep(0));
    # in a worker or the CLI it costs nothing.
    time.sleep(0)


def estimate_rows(text):
    """Rows of a CSV text, counted without parsing it (C speed): decides sync or background.
    Blank lines and a `keyword` header line are not rows."""
    text = text.strip("\r\n")
    if not text:
        return 0
    lines = text.count("\n") + 1 - text.count("\n\n") - text.count("\n\r\n")
    first = text[:text.find("\n")] if "\n" in text else text
    return lines - (1 if "keyword" in first.lower() else 0)


def parse_csv(text):
    """CSV with a header (keyword[,volume][,difficulty]) or a bare one-keyword-per-line list."""
    if "\x00" in text:
        raise BadRequest("The file is not a CSV text file.")
    rows = []
    try:
        for n, r in enumerate(csv.reader(io.StringIO(text)), start=1):
            if any(c.strip() for c in r):
                rows.append(r)
            if n % (CHUNK * 4) == 0:
                pause()
    except csv.Error as e:
        raise BadRequest(f"Malformed CSV: {e}.")
    if not rows:
        return []
    header = [c.strip().lower() for c in rows[0]]
    if "keyword" in header:
        idx = {name: header.index(name) for name in ("keyword", "volume", "difficulty") if name in header}
        out = []
        for r in rows[1:]:
            out.append({name: (r[i] if i < len(r) else "") for name, i in idx.items()})
        return out
    return [{"keyword": r[0]} for r in rows]


def _opt_int(value, name, lo, hi):
    if value in (None, ""):
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer")
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{name} must be an integer")
    if not lo <= n <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}")
    return n


def check_size(rows):
    if not isinstance(rows, list):
        raise BadRequest("'keywords' must be a list.")
    if len(rows) > MAX_ROWS:
        raise BadRequest(f"'keywords': at most {MAX_ROWS} rows per import.")


def classify(rows):
    """(clean rows (key, keyword, volume, difficulty), row errors, duplicates within the file)."""
    errors, clean, seen = [], [], set()
    duplicates = 0
    for i, row in enumerate(rows, start=1):
        if i % CHUNK == 0:
            pause()
        if isinstance(row, str):
            row = {"keyword": row}
        if not isinstance(row, dict):
            errors.append({"row": i, "error": "row must be an object with 'keyword'"})
            continue
        kw = row.get("keyword")
        if not isinstance(kw, str) or not kw.strip():
            errors.append({"row": i, "error": "keyword is blank"})
            continue
        kw = " ".join(kw.split()).lower()  # stored normalised: "Coffee  Beans" == "coffee beans"
        if len(kw) > MAX_KEYWORD:
            errors.append({"row": i, "error": f"keyword is longer than {MAX_KEYWORD} characters"})
            continue
        try:
            volume = _opt_int(row.get("volume"), "volume", 0, 10**9)
            difficulty = _opt_int(row.get("difficulty"), "difficulty", 0, 100)
        except ValueError as e:
            errors.append({"row": i, "error": str(e)})
            continue
        key = kw
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        clean.append((key, kw, volume, difficulty))
    return clean, errors, duplicates


def existing_keys(site, keys):
    existing = set()
    for start in range(0, len(keys), CHUNK):
        existing.update(db.session.execute(select(Keyword.keyword).where(
            Keyword.site_id == site.id, Keyword.keyword.in_(keys[start:start + CHUNK]))).scalars())
        pause()
    return existing


def lock_site(site):
    """Serialise imports into one site for the quota check (PostgreSQL: a row lock until the
    commit; SQLite serialises writers by itself)."""
    from .models import Site
    db.session.execute(select(Site.id).where(Site.id == site.id).with_for_update())


def _holds_lock_while_paused():
    # SQLite's busy handler sleeps in C: a greenlet waiting for the write lock would stop the
    # whole process, including the greenlet that holds the lock. So on SQLite the inserts of
    # one transaction run without yielding (the sync path is at most IMPORT_SYNC_MAX_ROWS rows);
    # PostgreSQL (psycogreen) waits cooperatively.
    return db.engine.dialect.name == "sqlite"


def add_keywords(site, new):
    """Add (key, keyword, volume, difficulty) rows in chunks, flushed (and, where the database
    allows, yielding) between."""
    may_pause = not _holds_lock_while_paused()
    for start in range(0, len(new), CHUNK):
        db.session.add_all([Keyword(account_id=site.account_id, site_id=site.id, keyword=kw, volume=volume,
                                    difficulty=difficulty) for _key, kw, volume, difficulty in new[start:start + CHUNK]])
        db.session.flush()
        if may_pause:
            pause()


def import_rows(site, rows, actor="system"):
    """Insert valid new keywords; report duplicates and invalid rows by row number (1-based).
    All or nothing: one transaction, refused whole when it would exceed the keyword quota."""
    from .quotas import check_keywords
    check_size(rows)
    clean, errors, duplicates = classify(rows)
    lock_site(site)
    existing = existing_keys(site, [c[0] for c in clean])
    new = [c for c in clean if c[0] not in existing]
    duplicates += len(clean) - len(new)
    try:
        check_keywords(site, len(new))
    except BadRequest:
        db.session.rollback()
        raise
    created = len(new)
    try:
        add_keywords(site, new)
        if created:
            from .audit import record
            record(site.account_id, actor, "keywords.import", site_id=site.id, created=created,
                   duplicates=duplicates, invalid=len(errors))
        db.session.commit()
    except IntegrityError:  # a concurrent import added some of the same keywords
        db.session.rollback()
        raise BadRequest("Another import for this site added some of these keywords at the same time; "
                         "nothing was imported, please retry.", 409)
    if created:
        from .count_generation import changed
        changed(site.id)  # the cached pending counts of every page are stale now
    return {"created": created, "duplicates": duplicates, "errors": errors, "rows": len(rows)}
