"""`/docs`: Swagger UI served from the installed package (swagger-ui-bundle-v2), never from a CDN.

FastAPI's default page loads Swagger UI's script and stylesheet from a CDN when the page is
opened: an unpinned version with no integrity check, and a blank page on a machine without
internet access. Here the files come from the Python package pinned in pyproject.toml, under
`/docs/assets/`; the page itself is FastAPI's (`get_swagger_ui_html`).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"


def install_docs(app: FastAPI) -> None:
    """Serve Swagger UI at /docs with its assets from the package (build the app with docs_url=None)."""
    app.mount(ASSETS_PATH, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui-assets")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - docs",
                                   swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png")
