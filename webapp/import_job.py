"""The RQ entry point of a background keyword import (webapp/imports.py queues it by name).

Kept out of imports.py: a job builds the app when it runs outside one, and the app's modules
import imports.py; nothing in the app imports this file, so that stays one-way.
"""
from contextlib import nullcontext

from flask import has_app_context

_APP = None


def _app_context():
    global _APP
    if has_app_context():
        return nullcontext()
    if _APP is None:
        from . import create_app
        _APP = create_app()
    return _APP.app_context()


def run_import_job(import_id):
    """Run one import (in the worker's app, built once per worker process)."""
    from .extensions import db
    from .imports import run_import
    with _app_context():
        try:
            run_import(import_id)
        finally:
            db.session.remove()
