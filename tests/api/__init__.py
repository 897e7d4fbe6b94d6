"""worker/api/: the HTTP API (and worker/asgi.py)."""
