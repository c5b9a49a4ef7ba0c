"""The one JSON error helper: every /api/ error is {"success": false, "error": msg}, with
`errors: {field: message}` beside it when fields are at fault."""
import logging
import uuid

from flask import jsonify, request
from werkzeug.exceptions import HTTPException

from ..errors import AppError

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, message=None, status=400, errors=None):
        from ..errors import describe
        message = message or describe(errors or {"body": "invalid request"})
        super().__init__(message)
        self.message = message
        self.status = status
        self.errors = errors or None

    @classmethod
    def from_app(cls, e):
        """An AppError raised by a service, as the API reports it."""
        return cls(e.message, e.status, getattr(e, "errors", None))


def ok(data, status=200):
    return jsonify({"success": True, "data": data}), status


def error(message, status, errors=None):
    body = {"success": False, "error": message}
    if errors:
        from ..errors import field_message
        body["errors"] = {k: field_message(k, v) for k, v in errors.items()}
    return jsonify(body), status


_MESSAGES = {
    401: "Authentication required.",
    404: "Not found.",
    405: "Method not allowed.",
    413: "Request body too large.",
}


def is_api_request():
    return request.path.startswith("/api/")


def register(app):
    @app.errorhandler(ApiError)
    def _api_error(e):
        return error(e.message, e.status, e.errors)

    @app.errorhandler(AppError)
    def _app_error(e):  # a service said no: its message (and fields) as JSON, or the error page
        if is_api_request():
            return error(e.message, e.status, e.errors)
        from flask import render_template
        return render_template("error.html", code=e.status, message=e.message), e.status

    @app.errorhandler(HTTPException)
    def _http_error(e):
        if not is_api_request():
            from flask import current_app, render_template
            message = e.description
            if e.code == 413:  # refused unread: say what to do, not just the status
                limit = request.max_content_length or 0
                message = (f"What you sent is larger than the {limit / 1048576:.0f} MB this server takes at once, "
                           "so it was not read and nothing changed. Go back (your browser keeps what you typed) "
                           "and split it into smaller parts, or upload several CSV files.")
            return render_template("error.html", code=e.code, message=message, back=e.code == 413), e.code
        msg = _MESSAGES.get(e.code) or e.description or e.name
        if e.code == 413 and request.max_content_length:
            msg = (f"Request body too large: this endpoint takes at most {request.max_content_length:,} bytes; "
                   "nothing was read or changed.")
        if e.code == 400 and e.description:
            msg = e.description
        resp = error(msg, e.code)
        if e.code == 405 and e.valid_methods:
            resp[0].headers["Allow"] = ", ".join(e.valid_methods)
        return resp

    @app.errorhandler(Exception)
    def _unexpected(e):
        # Logged with a request id that the client also sees; no stack trace leaves the server.
        rid = uuid.uuid4().hex[:12]
        log.exception("unhandled error request_id=%s path=%s", rid, request.path)
        from ..extensions import db
        db.session.rollback()
        if is_api_request():
            return error(f"Internal server error (request id {rid}).", 500)
        from flask import render_template
        return render_template("error.html", code=500, message=f"Something went wrong (request id {rid})."), 500
