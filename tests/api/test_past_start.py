"""Issue 25, the first hour: a campaign start time in the past was accepted without a word. The CLI
says so on standard error (tests/cli/test_first_hour.py); the API's create answer lists it in
`warnings`, and the console's review step shows it, all from `campaigns.past_start_note`."""

from __future__ import annotations

import re
from datetime import timedelta

from fastapi.testclient import TestClient

from tests.conftest import make_runtime, stack_env
from worker.access.keys import create_key
from worker.access.users import create_user
from worker.models import utcnow
from worker.runtime import install_runtime

CSV = "phone,name\n966501234567,Lina\n"
PASSWORD = "past start test password"
MESSAGE = {"body_text": "Hi {{name}}", "buttons": [{"id": "go", "title": "Go"}]}


def test_first_hour_a_past_start_is_a_warning_in_the_api_answer_and_on_the_console_review(sqlite_url: str) -> None:
    rt = make_runtime(stack_env(database_url=sqlite_url, sandbox_url="http://127.0.0.1:9"))
    past = (utcnow() - timedelta(hours=5)).replace(microsecond=0).isoformat()
    future = (utcnow() + timedelta(days=2)).replace(microsecond=0).isoformat()
    install_runtime(rt)
    try:
        from worker.asgi import create_app

        _, key = create_key(rt, name="past", scope="campaigns", actor="test")
        create_user(rt, email="ana@example.com", role="marketer", password=PASSWORD, actor="test")
        with TestClient(create_app()) as client:
            # the API: a past `at` is created (201) and said in `warnings`; a time to come is not
            auth = {"Authorization": f"Bearer {key}"}
            body = {"name": "Late", "message": MESSAGE, "recipients": [{"phone": "966501234567", "name": "Lina"}]}
            late = client.post("/v1/campaigns", headers=auth, json={**body, "at": past})
            assert late.status_code == 201, late.text
            [warning] = late.json()["warnings"]
            assert "is already past (5 h ago): the campaign starts at once" in warning
            on_time = client.post("/v1/campaigns", headers=auth, json={**body, "name": "On time", "at": future})
            assert on_time.status_code == 201 and on_time.json()["warnings"] == []

            # the console: the review of a draft with a past start says it starts at once
            form = client.get("/login")
            token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
            assert client.post("/login", data={"email": "ana@example.com", "password": PASSWORD, "csrf_token": token,
                                               "next": "/"}, follow_redirects=False).status_code == 303
            page = client.get("/campaigns/new")
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
            review = client.post("/campaigns/new", files={"recipients": ("recipients.csv", CSV.encode(), "text/csv")},
                                 data={"csrf_token": token, "name": "Late too", "body_text": "Hi {{name}}",
                                       "button_id_1": "go", "button_title_1": "Go", "phone_number_id": "123456",
                                       "at": past})
            assert review.status_code == 200, review.text[:500]
            assert 'id="start-in-past"' in review.text and "the campaign starts at once" in review.text
    finally:
        install_runtime(None)
        rt.close()
