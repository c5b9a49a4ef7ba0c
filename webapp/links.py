"""Links that leave the app (mail, invitations): PUBLIC_URL + the route's path.

Never built from the request: `url_for(..., _external=True)` takes the host from the Host
header, which the client writes (`Host: evil.example` made invitation links point to
evil.example). Works without a request too (mail is composed in the worker)."""
from flask import current_app


def public_url(endpoint, _fragment=None, **values):
    app = current_app
    path = app.url_map.bind("localhost", url_scheme="http").build(endpoint, values)
    url = app.config["PUBLIC_URL"] + path
    return f"{url}#{_fragment}" if _fragment else url
