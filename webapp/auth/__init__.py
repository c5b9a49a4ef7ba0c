"""Authentication: browser sessions (Flask-Login) and bearer API tokens. The session user
loader (with session generations) is in webapp/security.py."""
from .views import bp


def init_app(app):
    from ..extensions import login_manager

    login_manager.login_view = "auth.login"
    login_manager.login_message_category = "info"

    app.register_blueprint(bp)
