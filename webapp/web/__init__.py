import re

from markupsafe import Markup, escape

from .snapshot import duration
from .views import bp


def article_html(body, skip_title=False):
    """The generated markdown subset (#/## headings, paragraphs) as escaped HTML;
    `skip_title` drops the leading `# title` when the page shows it as its h1."""
    out = []
    for i, block in enumerate((body or "").split("\n\n")):
        block = block.strip()
        if not block or (skip_title and i == 0 and block.startswith("# ")):
            continue
        if block.startswith("## "):  # sections under the page's h1 (the title)
            out.append(f"<h2>{escape(block[3:])}</h2>")
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


def image_caption(image, content=None):
    """What an image is: its role and its article ("Featured image · How to …")."""
    content = content or image.content
    if image.kind == "featured":
        role = "Featured image"
    else:
        role = f"In-article image {image.position}"
    return f"{role} · {content.title}" if content else role


def init_app(app):
    from . import config_form, costs, live, ops, team, timefmt
    timefmt.init_app(app)
    config_form.init_app(app)
    app.register_blueprint(bp)
    app.register_blueprint(team.bp)
    app.register_blueprint(live.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(costs.bp)
    app.jinja_env.filters["article_html"] = article_html
    app.jinja_env.filters["duration"] = duration
    app.jinja_env.filters["image_caption"] = image_caption
    app.jinja_env.filters["log_class"] = log_class

    @app.context_processor
    def inject_account():
        from flask_login import current_user
        if current_user.is_authenticated:
            return {"account": current_user.account}
        return {}
