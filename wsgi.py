"""WSGI entry point: `flask --app wsgi ...` and `gunicorn wsgi:app`."""
from webapp import create_app

app = create_app()
