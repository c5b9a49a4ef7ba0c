"""Keyword import: JSON rows or CSV text, validated row by row, inserted all-or-nothing
per valid set (a malformed file imports nothing)."""
import csv
import io

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from .errors import BadRequest
from .extensions import db
from .models import Keyword

MAX_KEYWORD = 255
MAX_ROWS = 50_000


def parse_csv(text):
    """CSV with a header (keyword[,volume][,difficulty]) or a bare one-keyword-per-line list."""
    if "\x00" in text:
        raise BadRequest("The file is not a CSV text file.")
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as e:
        raise BadRequest(f"Malformed CSV: {e}.")
    rows = [r for r in rows if any(c.strip() for c in r)]
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


def import_rows(site, rows, actor="system"):
    """Insert valid new keywords; report duplicates and invalid rows by row number (1-based)."""
    if not isinstance(rows, list):
        raise BadRequest("'keywords' must be a list.")
    if len(rows) > MAX_ROWS:
        raise BadRequest(f"'keywords': at most {MAX_ROWS} rows per import.")
    errors, clean, seen = [], [], set()
    duplicates = 0
    for i, row in enumerate(rows, start=1):
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
    existing = set()
    keys = [c[0] for c in clean]
    for start in range(0, len(keys), 1000):
        existing.update(db.session.execute(select(Keyword.keyword).where(
            Keyword.site_id == site.id, Keyword.keyword.in_(keys[start:start + 1000]))).scalars())
    created = 0
    for key, kw, volume, difficulty in clean:
        if key in existing:
            duplicates += 1
            continue
        db.session.add(Keyword(account_id=site.account_id, site_id=site.id, keyword=kw, volume=volume,
                               difficulty=difficulty))
        created += 1
    if created:
        from .audit import record
        record(site.account_id, actor, "keywords.import", site_id=site.id, created=created, duplicates=duplicates,
               invalid=len(errors))
    try:
        db.session.commit()
    except IntegrityError:  # a concurrent import added some of the same keywords
        db.session.rollback()
        raise BadRequest("Another import for this site added some of these keywords at the same time; "
                         "nothing was imported, please retry.", 409)
    if created:
        from .automation.countcache import changed
        changed(site.id)  # the cached pending counts of every page are stale now
    return {"created": created, "duplicates": duplicates, "errors": errors, "rows": len(rows)}
