from markupsafe import Markup, escape

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


def duration(run):
    end = run.completed_at or run.cancelled_at
    if not end or not run.started_at:
        return ""
    secs = int((end - run.started_at).total_seconds())
    return f"{secs // 3600}h {secs % 3600 // 60}m" if secs >= 3600 else f"{secs // 60}m {secs % 60}s"


def init_app(app):
    from . import config_form, live, timefmt
    timefmt.init_app(app)
    config_form.init_app(app)
    app.register_blueprint(bp)
    app.register_blueprint(live.bp)
    app.jinja_env.filters["article_html"] = article_html
    app.jinja_env.filters["duration"] = duration

    @app.context_processor
    def inject_account():
        from flask_login import current_user
        if current_user.is_authenticated:
            return {"account": current_user.account}
        return {}
