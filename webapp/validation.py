"""Hostile input, checked once at the edge and reusable everywhere (API views, pydantic models,
forms, CLI): ids are ASCII digits within the database's integer range, text never carries a
NUL or a lone surrogate (PostgreSQL and SQLite refuse both, which used to surface as 500s),
JSON bodies have a bounded nesting depth, and length limits are the same numbers for the
form and the API.

Plain functions raise `InvalidInput(field, message)` (a `ValueError`, so a pydantic
validator can call them directly and pydantic names the field); `install(app)` adds the
request-wide guard and the strict URL converters.
"""
import json
import re

from flask import request
from werkzeug.routing import BaseConverter, IntegerConverter

MAX_ID = 2**31 - 1  # INTEGER columns on PostgreSQL (and what SQLite ids reach here)
MAX_JSON_DEPTH = 32

# Length limits shared by forms and the API (the database columns are at least this wide).
NAME_MAX = 120
DOMAIN_MAX = 255
EMAIL_MAX = 255
PASSWORD_MAX = 255
KEYWORD_MAX = 255
REASON_MAX = 500
NOTE_MAX = 2000


# What a domain and an email address look like (the same rule for forms, the API and its
# document): a domain is a host name (labels of letters, digits and inner hyphens, a dot
# between them, a top-level label of letters); an email is local@domain with such a domain.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
DOMAIN_PATTERN = rf"^(?:{_LABEL}\.)+[A-Za-z]{{2,63}}\.?$"
EMAIL_PATTERN = rf"^[^@\s\x00]{{1,64}}@(?:{_LABEL}\.)+[A-Za-z]{{2,63}}$"


# fullmatch, not match: the patterns' `$` (kept for the OpenAPI document) also matches before a
# trailing newline in Python, which let "example.com\n" through.
def is_domain(value):
    return isinstance(value, str) and len(value) <= DOMAIN_MAX and re.fullmatch(DOMAIN_PATTERN, value) is not None


def is_email(value):
    return isinstance(value, str) and len(value) <= EMAIL_MAX and re.fullmatch(EMAIL_PATTERN, value) is not None


class InvalidInput(ValueError):
    """Bad input for one field: `field` names it, `message` says what is wrong."""

    def __init__(self, field, message):
        super().__init__(message)
        self.field = field
        self.message = message


# -- ids -------------------------------------------------------------------------------------------
def is_ascii_digits(raw):
    return isinstance(raw, str) and raw != "" and raw.isascii() and raw.isdigit()


def parse_id(raw, field, minimum=1, maximum=MAX_ID):
    """An id (or any bounded whole number) from a query/form string: ASCII digits only (no sign,
    no spaces, no `1_0`, no other scripts' digits), within [minimum, maximum]. Raises
    InvalidInput naming `field` (a 400); a well-formed id that matches no row is the caller's
    404."""
    if isinstance(raw, bool):
        raise InvalidInput(field, f"'{field}' must be an integer.")
    if isinstance(raw, int):
        value = raw
    else:
        if not is_ascii_digits(raw):
            shown = str(raw)[:40]
            raise InvalidInput(field, f"'{field}' must be an integer (digits 0-9 only), got {shown!r}.")
        if len(raw) > 12:
            raise InvalidInput(field, f"'{field}' is out of range (at most {maximum}).")
        value = int(raw)
    if maximum == MAX_ID:  # an id: the upper bound is the database's, not a rule of the field
        if value < minimum:
            raise InvalidInput(field, f"'{field}' must be >= {minimum}.")
        if value > maximum:
            raise InvalidInput(field, f"'{field}' is out of range (at most {maximum}).")
    elif not minimum <= value <= maximum:
        raise InvalidInput(field, f"'{field}' must be between {minimum} and {maximum}.")
    return value


class StrictIntConverter(IntegerConverter):
    """`<int:…>` in every route: ASCII digits only (werkzeug's `\\d` also matches e.g. Arabic-Indic
    digits) and nothing above the DB range, so an absurd id is a plain 404, never an overflow."""
    regex = r"[0-9]{1,19}"

    def __init__(self, map, *args, **kwargs):
        kwargs.setdefault("max", MAX_ID)
        super().__init__(map, *args, **kwargs)


class AnyIdConverter(BaseConverter):
    """For websocket routes: matches any path segment and yields the id, or None when it is not
    a valid id, so the handler can close the socket with 4404 instead of the handshake failing."""
    regex = r"[^/]{1,64}"

    def to_python(self, value):
        return int(value) if is_ascii_digits(value) and len(value) <= 12 and 1 <= int(value) <= MAX_ID else None

    def to_url(self, value):
        return str(int(value))


# -- text ------------------------------------------------------------------------------------------
def text_problem(value):
    """What makes a string unstorable (NUL, a lone surrogate), or None."""
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (it contains a lone surrogate)"
    return None


def clean_text(value, field, max_length=None, required=False, strip=True):
    """A text field from a form or JSON: a string without NUL or surrogates, stripped, at most
    `max_length` characters; None/"" → None unless required. Raises InvalidInput."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidInput(field, f"'{field}' is required.")
        return None
    if not isinstance(value, str):
        raise InvalidInput(field, f"'{field}' must be a string.")
    problem = text_problem(value)
    if problem:
        raise InvalidInput(field, f"'{field}' {problem}.")
    if strip:
        value = value.strip()
    if max_length is not None and len(value) > max_length:
        raise InvalidInput(field, f"'{field}' must be at most {max_length} characters.")
    return value


def safe_str(value):
    """pydantic-friendly: `Annotated[str, AfterValidator(safe_str)]` refuses NUL and surrogates."""
    problem = text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def find_bad_text(obj, path="body"):
    """The first (path, problem) in a parsed JSON value whose keys or strings are unstorable."""
    stack = [(obj, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem:
                return where, problem
        elif isinstance(item, dict):
            for k, v in item.items():
                problem = text_problem(k) if isinstance(k, str) else None
                if problem:
                    return where, f"has a key that {problem}"
                stack.append((v, k if where == "body" else f"{where}.{k}"))
        elif isinstance(item, list):
            for i, v in enumerate(item):
                stack.append((v, f"{where}[{i}]"))
    return None


# -- JSON ------------------------------------------------------------------------------------------
def json_depth_exceeds(data, limit=MAX_JSON_DEPTH):
    """True when the JSON text nests arrays/objects deeper than `limit` (checked on the raw text
    before parsing: the parser itself would hit Python's recursion limit, a 500)."""
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    depth, in_string, escaped = 0, False, False
    for ch in data:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def check_json_body(raw):
    """Problems with a JSON request body before any view sees it: (field, message) or None."""
    if json_depth_exceeds(raw):
        return "body", f"JSON body is nested more than {MAX_JSON_DEPTH} levels deep."
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):
        return None  # malformed: the view's own parsing reports it
    bad = find_bad_text(parsed)
    if bad:
        return bad[0], f"'{bad[0]}' {bad[1]}."
    return None


# -- the request-wide guard ------------------------------------------------------------------------
# Endpoints whose bodies may be up to IMPORT_MAX_BYTES instead of MAX_CONTENT_LENGTH: the
# blueprints that own them add their names (keyword imports, web and API).
BIG_BODY_ENDPOINTS = set()


def request_problem():
    """(field, message) for hostile input anywhere in this request, or None: query string and
    form fields with NUL/surrogates, JSON bodies too deep or with unstorable strings."""
    sources = [request.args] if request.method in ("GET", "HEAD") else [request.args, request.form]
    for source in sources:
        for key, values in source.lists():
            for v in [key, *values]:
                if not isinstance(v, str):  # a multipart part without a name: nothing to store
                    continue
                problem = text_problem(v)
                if problem:
                    return key, f"'{key[:40]}' {problem}."
    if request.method not in ("GET", "HEAD") and request.mimetype and (
            request.mimetype == "application/json" or request.mimetype.endswith("+json")):
        raw = request.get_data(cache=True)
        if raw:
            return check_json_body(raw)
    return None


class _SafeJSONProvider:
    """Mixin for the app's JSON provider: depth is checked before json.loads everywhere (also
    for bodies read with force=True), so a deep body is a 400, not a RecursionError."""

    def loads(self, s, **kwargs):
        if json_depth_exceeds(s):
            raise ValueError(f"JSON nested more than {MAX_JSON_DEPTH} levels deep")
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply")


def install(app):
    from flask.json.provider import DefaultJSONProvider

    app.url_map.converters["int"] = StrictIntConverter
    app.url_map.converters["anyid"] = AnyIdConverter
    provider = type("SafeJSONProvider", (_SafeJSONProvider, type(app.json)), {})
    if isinstance(app.json, DefaultJSONProvider):
        app.json = provider(app)

    @app.errorhandler(InvalidInput)
    def _invalid_input(e):
        return _bad_request(e.field, e.message)

    @app.before_request
    def _refuse_oversized_request():
        # Keyword imports take bodies up to IMPORT_MAX_BYTES (a 50 000-row JSON import with
        # volume and difficulty is ~4 MB); every other request keeps MAX_CONTENT_LENGTH. Set
        # before anything reads the body (the hostile-input guard below does).
        if request.endpoint in BIG_BODY_ENDPOINTS:
            request.max_content_length = app.config.get("IMPORT_MAX_BYTES", app.config.get("MAX_CONTENT_LENGTH"))
        # The app's own limits, below the server's (gunicorn.conf.py): an over-long URL or header
        # gets the error envelope every other error has, not the server's HTML page.
        from werkzeug.exceptions import RequestHeaderFieldsTooLarge, RequestURITooLarge
        env = request.environ
        uri = env.get("RAW_URI") or env.get("REQUEST_URI") or (
            env.get("PATH_INFO", "") + ("?" + env["QUERY_STRING"] if env.get("QUERY_STRING") else ""))
        if len(uri) > app.config.get("MAX_URL_LENGTH", 4096):
            raise RequestURITooLarge(f"The URL is longer than {app.config.get('MAX_URL_LENGTH', 4096)} characters.")
        limit = app.config.get("MAX_HEADER_BYTES", 8190)
        for name, value in request.headers.items():
            if len(name) + len(value) + 2 > limit:
                raise RequestHeaderFieldsTooLarge(f"The header {name[:40]!r} is longer than {limit} bytes.")

    @app.before_request
    def _refuse_hostile_input():
        found = request_problem()
        if found is None:
            return None
        return _bad_request(*found)


def _bad_request(field, message):
    from flask import jsonify, render_template
    if request.path.startswith("/api/"):
        from .errors import field_message
        return jsonify({"success": False, "error": message, "errors": {field: field_message(field, message)}}), 400
    return render_template("error.html", code=400, message=message), 400
