"""Serving generated images: looked up by id and account; the path on disk comes from the
row (built from ids by stage 6), never from the URL."""
from pathlib import Path

from flask import abort, current_app, send_file
from flask_login import current_user, login_required
from sqlalchemy import select

from .extensions import db
from .models import Image


def init_app(app):
    @app.get("/media/images/<int:image_id>.png")
    @login_required
    def media_image(image_id):
        img = db.session.execute(select(Image).where(Image.id == image_id, Image.account_id == current_user.account_id,
                                                     Image.file_path.is_not(None))).scalar_one_or_none()
        if img is None:
            abort(404)
        root = Path(current_app.config["MEDIA_DIR"]).resolve()
        path = (root / img.file_path).resolve()
        if root not in path.parents or not path.is_file():
            abort(404)
        return send_file(path, mimetype="image/png", max_age=3600)
