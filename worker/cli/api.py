"""`buttoncast api` (the HTTP server) and `buttoncast apikey create|list|revoke`."""

from __future__ import annotations

import click

from worker.cli.common import ensure_schema, fail, friendly_errors, load_runtime

APP_FACTORY = "worker.asgi:create_app"
#: how long uvicorn's supervisor waits for a worker process to answer its ping (uvicorn's default, 5 s,
#: killed freshly spawned workers on a loaded 2-core machine while they were still importing)
WORKER_HEALTHCHECK_TIMEOUT_S = 30


def uvicorn_argv(host: str, port: int, workers: int) -> list[str]:
    """The uvicorn line `buttoncast api` is equivalent to (docs/api.md)."""
    return ["uvicorn", "--factory", APP_FACTORY, "--host", host, "--port", str(port), "--workers", str(workers),
            "--no-server-header", "--timeout-worker-healthcheck", str(WORKER_HEALTHCHECK_TIMEOUT_S)]


@click.command("api")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="Server processes (each with its own pools).")
@friendly_errors
def api_command(host: str, port: int, workers: int) -> None:
    """Serve the HTTP API: `uvicorn --factory worker.asgi:create_app --host H --port P --workers N` (docs/api.md)."""
    import uvicorn

    runtime = load_runtime()  # a bad setting stops here with one line, before any process starts
    ensure_schema(runtime)
    click.echo(f"buttoncast API on http://{host}:{port} ({workers} worker process(es)); docs at /docs", err=True)
    uvicorn.run(APP_FACTORY, factory=True, host=host, port=port, workers=workers, server_header=False,
                log_level="info", access_log=False, timeout_worker_healthcheck=WORKER_HEALTHCHECK_TIMEOUT_S)


@click.group("apikey")
def apikey_group() -> None:
    """API keys for the HTTP API (only their hashes are stored)."""


@apikey_group.command("create")
@click.option("--name", required=True, help="Who uses it, e.g. the integrating application.")
@click.option("--scope", required=True, type=click.Choice(["send", "campaigns", "admin"]),
              help="send: messages; campaigns: campaigns and messages; admin: everything.")
@friendly_errors
def apikey_create(name: str, scope: str) -> None:
    """Create a key; prints it once, alone on the last line of standard output."""
    from worker.access.keys import create_key

    runtime = load_runtime()
    ensure_schema(runtime)
    info, key = create_key(runtime, name=name, scope=scope, actor="cli")
    click.echo(f"API key {info.id} ({info.name}, scope {info.scope}, prefix {info.prefix}) created; "
               "it is shown this once and cannot be recovered", err=True)
    click.echo(key)


@apikey_group.command("list")
@friendly_errors
def apikey_list() -> None:
    """Every key: id, prefix, name, scope, created, revoked (never the key)."""
    from worker.access.keys import list_keys

    runtime = load_runtime()
    with runtime.read_sessions() as session:
        keys = list_keys(session)
    click.echo(f"{'id':>5}  {'prefix':<8}  {'scope':<9}  {'created (UTC)':<19}  {'revoked (UTC)':<19}  name")
    for k in keys:
        revoked = f"{k.revoked_at:%Y-%m-%d %H:%M:%S}" if k.revoked_at else "-"
        click.echo(f"{k.id:>5}  {k.prefix:<8}  {k.scope:<9}  {k.created_at:%Y-%m-%d %H:%M:%S}  {revoked:<19}  {k.name}")


@apikey_group.command("revoke")
@click.argument("key_id", type=int)
@friendly_errors
def apikey_revoke(key_id: int) -> None:
    """Revoke a key: its next request gets 401."""
    from worker.access.keys import ApiKeyNotFound, revoke_key

    runtime = load_runtime()
    try:
        info = revoke_key(runtime, key_id, actor="cli")
    except ApiKeyNotFound as exc:
        fail(str(exc), 1)
    click.echo(f"API key {info.id} ({info.name}) revoked")
