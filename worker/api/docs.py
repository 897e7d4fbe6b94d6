"""`/docs`: Swagger UI served from the installed package (swagger-ui-bundle-v2), never from a CDN.

FastAPI's default page loads Swagger UI's script and stylesheet from a CDN when the page is
opened: an unpinned version with no integrity check, and a blank page on a machine without
internet access. Here the files come from the Python package pinned in pyproject.toml, under
`/docs/assets/`. The page starts Swagger UI from a script file of its own (INIT_PATH), not an
inline script: the one Content-Security-Policy of the app (worker.console.security) allows none.
"""

from __future__ import annotations

import html
import json

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
INIT_PATH = "/docs/assets/buttoncast-init.js"   # ours, answered before the package's files are looked at
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="icon" href="{assets}/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{init}"></script>
</body>
</html>
"""


def install_docs(app: FastAPI) -> None:
    """Serve Swagger UI at /docs with its assets from the package (build the app with docs_url=None)."""
    options = {"url": app.openapi_url or "/openapi.json", "dom_id": "#swagger-ui", "layout": "BaseLayout",
               "deepLinking": True, "showExtensions": True, "showCommonExtensions": True}
    init = (f"window.ui = SwaggerUIBundle(Object.assign({json.dumps(options)}, "
            "{presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset]}));\n")
    page = PAGE.format(title=html.escape(f"{app.title} - docs"), assets=ASSETS_PATH, init=INIT_PATH)

    @app.get(INIT_PATH, include_in_schema=False)
    async def swagger_ui_init() -> Response:
        return Response(init, media_type="text/javascript")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(page)

    app.mount(ASSETS_PATH, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui-assets")
