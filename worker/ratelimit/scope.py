"""The scope a rate budget is kept for.

Assumption (AWAL_API.md): one rate budget per workspace and endpoint. This is the one place that
choice is made; the limiter, `buttoncast limits` and `GET /v1/limits` name scopes through it.
"""

from __future__ import annotations

ENDPOINT_BUTTON = "button"


def workspace_scope(settings, endpoint: str = ENDPOINT_BUTTON) -> str:  # noqa: ANN001 - worker.settings.Settings
    """Assumption (AWAL_API.md): one rate budget per workspace and endpoint."""
    return f"{settings.awal_domain or 'default'}:{endpoint}"
