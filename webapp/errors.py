"""Errors the services raise; the API turns them into JSON, the UI into flash messages."""


def describe(errors):
    """One sentence naming every field at fault: "'a' is required; 'b' must be >= 1."."""
    return "; ".join(f"'{k}' {v}" if k != "body" else v for k, v in errors.items()) + "."


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
