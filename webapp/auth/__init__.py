"""Authentication: browser sessions (Flask-Login) and bearer API tokens."""
from .views import bp


def init_app(app):
    from ..extensions import login_manager
    from ..models import User
    from ..extensions import db

    login_manager.login_view = "auth.login"
    login_manager.login_message_category = "info"

    @login_manager.user_loader
    def load_user(user_id):
        try:
            user = db.session.get(User, int(user_id))
        except (TypeError, ValueError):
            return None
        return user if user and user.active else None

    app.register_blueprint(bp)
