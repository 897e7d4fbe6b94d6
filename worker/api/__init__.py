"""The HTTP API (FastAPI on uvicorn): one module per noun, each route a thin face of a service function.

`create_app` lives in `worker.asgi`; this package imports nothing heavy, so the models can be
imported (by Alembic, by the CLI) without FastAPI.
"""
