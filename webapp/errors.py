"""Errors the services raise; the API turns them into JSON, the UI into flash messages."""


class AppError(Exception):
    status = 400

    def __init__(self, message, status=None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class NotFound(AppError):
    status = 404


class BadRequest(AppError):
    status = 400


class Unavailable(AppError):
    status = 503
