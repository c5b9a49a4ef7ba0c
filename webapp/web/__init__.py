import re

from markupsafe import Markup, escape

from .snapshot import duration
from .views import bp


def article_html(body):
    """The generated markdown subset (#/## headings, paragraphs) as escaped HTML."""
    out = []
    for block in (body or "").split("\n\n"):
        block = block.strip()
        if not block:
            continue
        if block.startswith("## "):
            out.append(f"<h3>{escape(block[3:])}</h3>")
        elif block.startswith("# "):
            out.append(f"<h2>{escape(block[2:])}</h2>")
        else:
            out.append(f"<p>{escape(block)}</p>")
    return Markup("\n".join(out))


# Lines that report a failure, an error or a stop for lack of something: shown in red. The
# same rule is in static/js/app.js for lines that arrive live.
ERROR_LINE = re.compile(r"FAILED|attempt \d+ failed|[Ee]rror|unavailable|[Ii]nsufficient|Run failed")


def log_class(line):
    return " ln-error" if ERROR_LINE.search(line or "") else ""


def init_app(app):
    from . import live, ops
    app.register_blueprint(bp)
    app.register_blueprint(live.bp)
    app.register_blueprint(ops.bp)
    app.jinja_env.filters["article_html"] = article_html
    app.jinja_env.filters["duration"] = duration
    app.jinja_env.filters["log_class"] = log_class

    @app.context_processor
    def inject_account():
        from flask_login import current_user
        if current_user.is_authenticated:
            return {"account": current_user.account}
        return {}
