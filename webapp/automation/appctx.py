"""The app a job runs in when its process has none pushed (an RQ worker started without
worker.py, say): built once, by the factory the process hands in (`worker.py` hands in the
app it built with `create_app`). This floor never imports `create_app` itself: the app package
is above it."""
from contextlib import nullcontext

from flask import has_app_context

_factory = None
_app = None


def use_app_factory(factory):
    """`factory()` builds the app a job without an app context runs in (once per process)."""
    global _factory
    _factory = factory


def app_context():
    """The pushed app's context when there is one, else the process's own app's."""
    global _app
    if has_app_context():
        return nullcontext()
    if _app is None:
        if _factory is None:
            raise RuntimeError("no Flask app for this job: run workers with worker.py "
                               "(or call appctx.use_app_factory(create_app) first)")
        _app = _factory()
    return _app.app_context()
