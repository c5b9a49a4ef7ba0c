"""The RQ entry point of a background keyword import (webapp/imports.py queues it by name).

Kept out of imports.py: a job builds the app when it runs outside one (through the engine's
job context), and the app's modules import imports.py; nothing in the app imports this file,
so that stays one-way.
"""


def run_import_job(import_id):
    """Run one import (in the worker's app, built once per worker process)."""
    from .automation.tasks import _app_context
    from .extensions import db
    from .imports import run_import
    with _app_context():
        try:
            run_import(import_id)
        finally:
            db.session.remove()
