"""Security wiring in one place, installed by `create_app` (init_app):

- session generations: every session cookie carries the user's `session_generation`; logout,
  a password change, `flask --app wsgi logout-user EMAIL` or deactivating a user call
  `end_sessions(user)`, and every earlier cookie stops working at once (web, API, websockets).
"""
import logging

from flask import session
from sqlalchemy import update

from .extensions import db, login_manager

log = logging.getLogger(__name__)


# -- session generations --------------------------------------------------------------------------
def _parse_session_id(value):
    """`"<user id>:<generation>"` → (id, generation), or None for anything else (older
    cookies without a generation included: they must log in again)."""
    if not isinstance(value, str):
        return None
    uid, sep, gen = value.partition(":")
    if not sep or not (uid.isascii() and uid.isdigit() and gen.isascii() and gen.isdigit()):
        return None
    if len(uid) > 10 or len(gen) > 10:
        return None
    return int(uid), int(gen)


def load_session_user(value):
    """The active user a session cookie's id names, if its generation is still current; else
    None. Flask-Login's user loader; websockets call it again (through `session_user()`) to
    notice a logout while they are open."""
    from .models import User
    parsed = _parse_session_id(value)
    if parsed is None:
        return None
    uid, gen = parsed
    user = db.session.get(User, uid)
    if user is None or not user.active or (user.session_generation or 0) != gen:
        return None
    return user


def session_user():
    """Re-read the current request's session user from the database (no cache): None once
    the user logged out elsewhere, was logged out by an operator or deactivated."""
    from .models import User
    parsed = _parse_session_id(session.get("_user_id"))
    if parsed is None:
        return None
    db.session.expire_all()  # a long-lived websocket must see other processes' commits
    user = db.session.get(User, parsed[0])
    if user is None or not user.active or (user.session_generation or 0) != parsed[1]:
        return None
    return user


def end_sessions(user, commit=True):
    """End every session of `user` (all browsers, all web processes): one atomic increment,
    so two concurrent calls both count. API tokens are not touched (revoke those separately)."""
    from .models import User
    db.session.execute(update(User).where(User.id == user.id)
                       .values(session_generation=User.session_generation + 1))
    if commit:
        db.session.commit()
    db.session.expire(user, ["session_generation"])
    log.info("ended all sessions of user %s", user.id)


def init_app(app):
    login_manager.user_loader(load_session_user)
