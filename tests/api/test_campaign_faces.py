"""One core, three faces: `buttoncast campaign create`, `POST /v1/campaigns` and the console's New
campaign form all create a campaign through `scheduler.campaigns.create_from_options`, and what
each gets back is what that one call stored."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from scheduler import campaigns
from tests.conftest import make_runtime, stack_env
from worker.access.keys import create_key
from worker.access.users import create_user
from worker.cli.campaigns import campaign_group
from worker.runtime import install_runtime

CSV = "phone,name\n966501234567,Lina\n966501234568,Majed\n"
MESSAGE = '{"body_text": "Hi {{name}}", "buttons": [{"id": "go", "title": "Go"}]}'
PASSWORD = "faces test password"


@pytest.fixture()
def calls(monkeypatch):  # noqa: ANN001, ANN201
    """Every call of the service, with its options and the campaign it made."""
    made: list[dict] = []
    real = campaigns.create_from_options

    def spy(runtime, recipients, **options):  # noqa: ANN001, ANN003, ANN202
        campaign, result = real(runtime, recipients, **options)
        made.append({"campaign_id": campaign.id, "imported": result.imported, **options})
        return campaign, result

    monkeypatch.setattr(campaigns, "create_from_options", spy)
    return made


def test_the_cli_the_api_and_the_console_create_through_one_service_function(sqlite_url, tmp_path, calls) -> None:  # noqa: ANN001
    env = stack_env(database_url=sqlite_url, sandbox_url="http://127.0.0.1:9")
    (tmp_path / "recipients.csv").write_text(CSV)
    (tmp_path / "message.json").write_text(MESSAGE)

    # the CLI (it installs its own runtime from the environment)
    cli = CliRunner().invoke(campaign_group, ["create", "--name", "From the CLI", "--message", str(tmp_path / "message.json"),
                                              "--recipients", str(tmp_path / "recipients.csv"), "--draft"],
                             env=env, catch_exceptions=False)
    assert cli.exit_code == 0, cli.stderr
    assert int(cli.stdout.strip().splitlines()[-1]) == calls[-1]["campaign_id"] and calls[-1]["name"] == "From the CLI"

    rt = make_runtime(env)
    install_runtime(rt)
    try:
        from worker.asgi import create_app

        _, key = create_key(rt, name="faces", scope="campaigns", actor="test")
        create_user(rt, email="ana@example.com", role="marketer", password=PASSWORD, actor="test")
        with TestClient(create_app()) as client:
            # the API
            api = client.post("/v1/campaigns", headers={"Authorization": f"Bearer {key}"},
                              json={"name": "From the API", "message": {"body_text": "Hi", "buttons": [{"id": "go", "title": "Go"}]},
                                    "recipients": [{"phone": "966501234567"}]})
            assert api.status_code == 201, api.text
            assert api.json()["id"] == calls[-1]["campaign_id"] and calls[-1]["actor"].startswith("apikey:")

            # the console
            form = client.get("/login")
            token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
            assert client.post("/login", data={"email": "ana@example.com", "password": PASSWORD, "csrf_token": token,
                                               "next": "/"}, follow_redirects=False).status_code == 303
            page = client.get("/campaigns/new")
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
            review = client.post("/campaigns/new", files={"recipients": ("recipients.csv", CSV.encode(), "text/csv")},
                                 data={"csrf_token": token, "name": "From the console", "body_text": "Hi {{name}}",
                                       "button_id_1": "go", "button_title_1": "Go", "phone_number_id": "123456"})
            assert review.status_code == 200, review.text[:500]
            assert calls[-1]["name"] == "From the console" and calls[-1]["actor"] == "user:ana@example.com"
            assert f"/campaigns/{calls[-1]['campaign_id']}" in review.text
    finally:
        install_runtime(None)
        rt.close()
    assert [c["name"] for c in calls] == ["From the CLI", "From the API", "From the console"]
    assert [c["imported"] for c in calls] == [2, 1, 2]
