from .views import bp


def init_app(app):
    app.register_blueprint(bp)

    @app.context_processor
    def inject_account():
        from flask_login import current_user
        if current_user.is_authenticated:
            return {"account": current_user.account}
        return {}
