"""The periodic retention job (declared in webapp/scheduling.py): applies RETENTION_DAYS.
Apart from retention.py so that nothing importing retention (the CLI, site deletion) reaches
the worker's app bootstrap (tasks._app_context) and back."""
import logging

from flask import current_app

from ..extensions import db
from .retention import prune

log = logging.getLogger(__name__)


def prune_task():
    """The periodic job (webapp/scheduling.py): applies RETENTION_DAYS; nothing when unset."""
    from .tasks import _app_context
    with _app_context():
        try:
            days = current_app.config.get("RETENTION_DAYS")
            if not days:
                return None
            report = prune(days)
            if report["runs"]:
                log.info("retention: files of %d runs deleted (%d objects)", report["runs"], report["objects"])
            return report
        finally:
            db.session.remove()
