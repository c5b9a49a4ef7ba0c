"""Serving generated images: looked up by id and the caller's account (browser session or
bearer token); the path on disk comes from the row (built from ids by stage 6), never
from the URL."""
from pathlib import Path

from flask import abort, current_app, redirect, request, send_file, url_for
from sqlalchemy import select

from .auth.tokens import caller_account_id
from .extensions import db
from .models import Image


def init_app(app):
    @app.get("/media/images/<int(max=2147483647):image_id>.png")
    def media_image(image_id):
        account_id = caller_account_id()
        if account_id is None:
            if request.headers.get("Authorization"):
                abort(401)
            return redirect(url_for("auth.login", next=request.path))
        img = db.session.execute(select(Image).where(Image.id == image_id, Image.account_id == account_id,
                                                     Image.file_path.is_not(None))).scalar_one_or_none()
        if img is None:
            abort(404)
        root = Path(current_app.config["MEDIA_DIR"]).resolve()
        path = (root / img.file_path).resolve()
        if root not in path.parents or not path.is_file():
            abort(404)
        return send_file(path, mimetype="image/png", max_age=3600)
