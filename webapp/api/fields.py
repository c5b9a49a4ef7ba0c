"""Field-level errors in the API envelope: {"success": false, "error": "…", "errors": {field: msg}}."""
from flask import jsonify


def field_error_response(message, errors, status=400):
    return jsonify({"success": False, "error": message, "errors": errors}), status


def register(app):
    from ..notify.webhooks import FieldErrors
    from ..writer.review import ReviewError

    for cls in (FieldErrors, ReviewError):
        @app.errorhandler(cls)
        def _fields(e):
            return field_error_response(e.message, e.errors, e.status)
