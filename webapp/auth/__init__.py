"""Authentication: browser sessions (Flask-Login) and bearer API tokens. The session user
loader (with session generations) is in webapp/security.py."""
from .views import bp, throttled_login


def init_app(app):
    from ..extensions import login_manager
    from ..security import throttled_page

    login_manager.login_view = "auth.login"
    login_manager.login_message_category = "info"

    throttled_page("auth.login", throttled_login)  # a 429 on the form shows the form again
    app.register_blueprint(bp)
