"""Serving generated images: looked up by id and the caller's account (browser session or
bearer token); the store key is rebuilt from the row's ids (webapp/storage/keys.py), never
taken from the URL, and the object is streamed from the store (a local folder or a bucket)."""
from flask import abort, redirect, request, url_for
from sqlalchemy import select

from .auth.tokens import caller_account_id
from .extensions import db
from .models import Image
from .storage import StoreError, get_store
from .storage.keys import image_key


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
        key = image_key(img.account_id, img.site_id, img.id)
        try:
            resp = get_store().response(key, "image/png", max_age=3600)
        except StoreError:  # the bucket is unreachable: a retryable answer, not a 500
            abort(503)
        if resp is None:
            abort(404)
        return resp
