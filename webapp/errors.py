"""Errors the services raise; the API turns them into JSON, the UI into flash messages."""


def describe(errors):
    """One sentence naming every field at fault: "'a' is required; 'b' must be >= 1."."""
    return "; ".join(f"'{k}' {v}" if k != "body" else v for k, v in errors.items()) + "."


def field_message(field, message):
    """A field's message without the field's name in front ("'email' must be…" → "must be…"):
    it is shown next to the field (forms) or keyed by it (`errors` in the API)."""
    for prefix in (f"'{field}' ", f"'{field}': "):
        if isinstance(message, str) and message.startswith(prefix):
            return message[len(prefix):].rstrip(".")
    return message


# The words a person sees on the forms for the fields services name ('expires_at' → "Expires").
LABELS = {"email": "Email", "password": "Password", "role": "Role", "expires_at": "Expiry date", "domain": "Domain",
          "name": "Name", "timezone": "Time zone", "url": "URL", "events": "Events", "scope": "Scope",
          "confirm": "Confirmation", "note": "Note", "scheduled_day": "Day", "scheduled_time": "Time"}


def plain_message(e_or_message):
    """A service's message for a page (flash): "'role': the account needs…" → "Role: the account
    needs…", "'email' must be…" → "Email must be…"."""
    msg = getattr(e_or_message, "message", e_or_message)
    if isinstance(msg, str) and msg.startswith("'") and msg.count("'") >= 2:
        field, rest = msg[1:].split("'", 1)
        if field in LABELS:
            return LABELS[field] + rest
    return msg


def field_errors_of(e):
    """{field: message} of an AppError: its `errors`, or the field its message starts with."""
    errors = getattr(e, "errors", None)
    if not errors:
        msg = e.message
        field = msg.split("'")[1] if msg.startswith("'") and msg.count("'") >= 2 else "form"
        errors = {field: msg}
    return {k: field_message(k, v) for k, v in errors.items()}


class AppError(Exception):
    status = 400

    def __init__(self, message=None, status=None, errors=None):
        # `errors` ({field: message}) names every field at fault; the message is built from it
        # when not given, so API clients and forms see the same words.
        message = message or describe(errors or {"body": "invalid request"})
        super().__init__(message)
        self.message = message
        self.errors = errors or getattr(self, "errors", None)  # subclasses may set it first
        if status is not None:
            self.status = status


class NotFound(AppError):
    status = 404


class BadRequest(AppError):
    status = 400


class Conflict(AppError):
    status = 409


class Unavailable(AppError):
    status = 503


class Gone(AppError):
    status = 410
