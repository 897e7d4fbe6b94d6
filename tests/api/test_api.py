"""Issue 14: the HTTP API over HTTP, against real processes (`buttoncast api`, `buttoncast worker`),
Postgres, Redis and the sandbox: every endpoint and every error (401, 403, 404, 405, 409, 413, 415, 422)."""

from __future__ import annotations

import hashlib
import threading
import uuid

import httpx
import pytest
import requests
import sqlalchemy as sa

from tests.api_stack import ApiStack, create_key, start_api_stack
from tests.conftest import wait_until
from worker.access.models import ApiKey, IdempotentRequest
from worker.audit import AuditEvent
from worker.models import Message, MessageEvent

pytestmark = pytest.mark.slow
BUTTONS = [{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}]
MAX_BODY = 65_536
KEY_CACHE_S = 0.5
MESSAGE_JSON = '{"body_text": "Hello {{name}}", "buttons": [{"id": "go", "title": "Go"}]}'


@pytest.fixture(scope="module")
def api(migrated_postgres, redis_url, tmp_path_factory) -> ApiStack:  # noqa: ANN001
    from worker.sandbox import SandboxConfig, SandboxServer

    server = SandboxServer(SandboxConfig(seed=7))
    sandbox_url = server.start_in_thread()
    stack = start_api_stack(migrated_postgres, redis_url, sandbox_url, tmp_path_factory.mktemp("api"),
                            API_MAX_BODY_BYTES=str(MAX_BODY), API_MAX_UPLOAD_BYTES=str(4 * MAX_BODY),
                            API_KEY_CACHE_S=str(KEY_CACHE_S))
    yield stack
    stack.close()
    server.stop()


def phone() -> str:
    return "96650" + str(uuid.uuid4().int)[:7]


def message_body(**changes) -> dict:  # noqa: ANN003
    return {"phone": phone(), "body_text": "Your order has shipped", "buttons": BUTTONS, **changes}


def count_messages(api: ApiStack, **where) -> int:  # noqa: ANN003
    with api.runtime.session_factory() as s:
        return s.scalar(sa.select(sa.func.count()).select_from(Message).filter_by(**where))


def assert_problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["type"].startswith("urn:buttoncast:problem:") and body["title"]
    return body


# --- keys and scopes -------------------------------------------------------------------------

def test_apikey_create_prints_the_key_alone_on_the_last_line_and_stores_only_its_hash(api: ApiStack) -> None:
    done = create_key(api.env, "crm", "send")
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip().splitlines()[-1]
    assert done.stdout.strip() == key and key.startswith("bc_") and len(key) > 40
    with api.runtime.session_factory() as s:
        row = s.scalar(sa.select(ApiKey).where(ApiKey.prefix == key.split("_")[1]))
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest() and key not in repr(row.__dict__)
    listing = __import__("subprocess").run([__import__("sys").executable, "-m", "worker.cli", "apikey", "list"],
                                           env=api.env, capture_output=True, text=True, timeout=60)
    assert row.prefix in listing.stdout and "crm" in listing.stdout and key not in listing.stdout


def test_requests_without_a_key_or_with_a_bad_or_revoked_key_get_401_before_the_body_is_read(api: ApiStack) -> None:
    with api.client(None) as anonymous:
        assert_problem(anonymous.post("/v1/messages", json=message_body()), 401)
        assert anonymous.get("/v1/messages").headers["www-authenticate"].startswith("Bearer")
        bad = api.keys["send"][:-4] + "AAAA"
        assert_problem(anonymous.get("/v1/messages", headers={"Authorization": f"Bearer {bad}"}), 401)
        assert_problem(anonymous.get("/v1/messages", headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401)
        # A body over the limit but without a key: refused without reading it (401 or 413, never 5xx).
        assert anonymous.post("/v1/messages", content=b"x" * 10).status_code == 401
    done = create_key(api.env, "to-revoke", "admin")
    key = done.stdout.strip().splitlines()[-1]
    with httpx.Client(base_url=api.base_url, headers={"Authorization": f"Bearer {key}"}) as client:
        assert client.get("/v1/limits").status_code == 200
        with api.runtime.session_factory() as s:
            key_id = s.scalar(sa.select(ApiKey.id).where(ApiKey.prefix == key.split("_")[1]))
        revoked = __import__("subprocess").run([__import__("sys").executable, "-m", "worker.cli", "apikey", "revoke", str(key_id)],
                                               env=api.env, capture_output=True, text=True, timeout=60)
        assert revoked.returncode == 0, revoked.stderr
        # A verified key is trusted for API_KEY_CACHE_S; after that the revoked key is refused.
        wait_until(lambda: client.get("/v1/limits").status_code == 401, 10 * KEY_CACHE_S + 5, what="revoked key refused")
        assert_problem(client.get("/v1/limits"), 401)


def test_a_key_without_the_scope_gets_403(api: ApiStack) -> None:
    with api.client("send") as send, api.client("campaigns") as campaigns:
        assert "needs campaigns" in assert_problem(send.get("/v1/campaigns"), 403)["detail"]
        assert_problem(send.post("/v1/retry", json={"message_id": 1}), 403)
        assert_problem(campaigns.get("/v1/limits"), 403)
        assert_problem(campaigns.post("/v1/retry", json={"message_id": 1}), 403)
        assert send.get("/v1/messages").status_code == 200
        assert campaigns.get("/v1/messages").status_code == 200 and campaigns.get("/v1/campaigns").status_code == 200


# --- messages --------------------------------------------------------------------------------

def test_post_message_is_sent_by_the_worker_and_get_shows_ids_attempts_and_the_key_that_made_it(api: ApiStack) -> None:
    with api.client("send") as client:
        created = client.post("/v1/messages", json=message_body(header_text="Order 42"))
        assert created.status_code == 202, created.text
        assert created.json()["status"] == "queued"
        mid = created.json()["id"]
        detail = wait_until(lambda: (r := client.get(f"/v1/messages/{mid}").json())["status"] == "sent" and r, 30, what="sent")
    assert detail["vendor_message_id"].startswith("wamid.") and detail["vendor_id"] is not None
    assert detail["attempt_count"] == 1 and detail["attempts"][0]["outcome"] == "sent"
    assert detail["content"]["header_text"] == "Order 42"
    assert detail["events"][0]["actor"].startswith("apikey:") and detail["events"][0]["actor"].endswith(":test-send")


def test_an_invalid_message_is_422_with_the_cli_field_names_and_wording_and_nothing_is_stored(api: ApiStack) -> None:
    body = message_body(buttons=[{"id": "a", "title": "x" * 21}, {"id": "a", "title": "B"}], footer_text="")
    with api.client("send") as client:
        problem = assert_problem(client.post("/v1/messages", json=body, headers={"Idempotency-Key": f"bad-{uuid.uuid4()}"}), 422)
        assert {"field": "buttons[0].title", "problem": "is 21 characters; the limit is 20"} in problem["errors"]
        assert {"field": "buttons[1].id", "problem": "'a' repeats an earlier button's id; ids must be unique"} in problem["errors"]
        assert any(e["field"] == "footer_text" for e in problem["errors"])
        unknown = assert_problem(client.post("/v1/messages", json={**message_body(), "colour": "red"}), 422)
        assert unknown["errors"] == [{"field": "colour", "problem": "is not a known field"}]
        assert assert_problem(client.post("/v1/messages", content=b"{nope", headers={"Content-Type": "application/json"}), 422)["errors"][0]["field"] == "body"
        assert_problem(client.post("/v1/messages", content=b"a=b", headers={"Content-Type": "application/x-www-form-urlencoded"}), 415)
    assert count_messages(api, phone=body["phone"]) == 0


def test_idempotency_key_same_body_replays_the_first_answer_and_a_different_body_is_refused(api: ApiStack) -> None:
    key = f"order-{uuid.uuid4()}"
    body = message_body()
    with api.client("send") as client:
        # A request that failed validation saves nothing: the key stays free.
        assert_problem(client.post("/v1/messages", json={**body, "buttons": []}, headers={"Idempotency-Key": key}), 422)
        with api.runtime.session_factory() as s:
            assert s.scalar(sa.select(IdempotentRequest).where(IdempotentRequest.key == key)) is None
        first = client.post("/v1/messages", json=body, headers={"Idempotency-Key": key})
        again = client.post("/v1/messages", json=dict(reversed(list(body.items()))), headers={"Idempotency-Key": key})
        assert first.status_code == again.status_code == 202
        assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
        other = assert_problem(client.post("/v1/messages", json={**body, "body_text": "changed"}, headers={"Idempotency-Key": key}), 422)
        assert "different request body" in other["detail"]
    assert count_messages(api, phone=body["phone"]) == 1


def test_two_concurrent_requests_with_one_idempotency_key_create_one_message(api: ApiStack) -> None:
    key, body = f"race-{uuid.uuid4()}", message_body()
    barrier, answers = threading.Barrier(8), []

    def post() -> None:
        with api.client("send") as client:
            barrier.wait()
            answers.append(client.post("/v1/messages", json=body, headers={"Idempotency-Key": key}))

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a.status_code for a in answers] == [202] * 8, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert count_messages(api, phone=body["phone"]) == 1


def test_list_messages_pages_by_cursor_newest_first_and_filters(api: ApiStack) -> None:
    number = phone()
    with api.client("send") as client:
        ids = [client.post("/v1/messages", json=message_body(phone=number)).json()["id"] for _ in range(5)]
        seen, cursor = [], None
        for _ in range(4):
            page = client.get("/v1/messages", params={"phone": "+" + number, "limit": 2, **({"cursor": cursor} if cursor else {})}).json()
            seen += [m["id"] for m in page["data"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == sorted(ids, reverse=True)
        assert client.get("/v1/messages", params={"phone": number, "status": "rejected"}).json()["data"] == []
        assert assert_problem(client.get("/v1/messages", params={"cursor": "garbage"}), 422)["errors"][0]["field"] == "cursor"
        assert assert_problem(client.get("/v1/messages", params={"limit": "many"}), 422)["errors"] == [{"field": "limit", "problem": "must be a whole number"}]
        assert assert_problem(client.get("/v1/messages", params={"phone": "12"}), 422)["errors"][0]["field"] == "phone"


def test_unknown_things_are_404_and_wrong_methods_405_as_problems(api: ApiStack) -> None:
    with api.client("admin") as client:
        assert_problem(client.get("/v1/messages/987654321"), 404)
        assert_problem(client.get("/v1/campaigns/987654321"), 404)
        assert_problem(client.post("/v1/campaigns/987654321/pause"), 404)
        assert_problem(client.get("/v1/campaigns/987654321/report"), 404)
        assert_problem(client.get("/v1/nothing-here"), 404)
        assert_problem(client.delete("/v1/messages"), 405)
        assert_problem(client.get("/no-such-page"), 404)


def test_bodies_over_the_limit_are_413_declared_or_chunked(api: ApiStack) -> None:
    big = {**message_body(), "body_text": "x" * (MAX_BODY + 10)}
    with api.client("send") as client:
        assert "larger than the limit" in assert_problem(client.post("/v1/messages", json=big), 413)["detail"]

        def chunks():  # no Content-Length: counted as it arrives
            yield b'{"phone": "966500000000", "body_text": "'
            for _ in range(MAX_BODY // 1024 + 2):
                yield b"x" * 1024
            yield b'"}'

        assert_problem(client.post("/v1/messages", content=chunks(), headers={"Content-Type": "application/json"}), 413)
    with api.client("campaigns") as client:
        csv_big = b"phone,name\n" + b"966500000001,Lina\n" * (4 * MAX_BODY // 17 + 10)
        assert_problem(client.post("/v1/campaigns", data={"name": "big", "message": MESSAGE_JSON},
                                   files={"recipients": ("r.csv", csv_big, "text/csv")}), 413)


# --- campaigns -------------------------------------------------------------------------------

def _csv(*rows: str) -> bytes:
    return ("phone,name\n" + "".join(r + "\n" for r in rows)).encode()


def test_campaign_from_a_csv_upload_report_show_and_every_action(api: ApiStack) -> None:
    a, b = phone(), phone()
    with api.client("campaigns") as client:
        created = client.post("/v1/campaigns", data={"name": "Spring", "draft": "true"},
                              files={"recipients": ("spring.csv", _csv(f"{a},Lina", "12,Bad", f"{b},Majed", f"+{a},Again"), "text/csv"),
                                     "message": ("message.json", MESSAGE_JSON.encode(), "application/json")})
        assert created.status_code == 201, created.text
        r = created.json()
        assert (r["imported"], r["duplicates"], r["rejected_total"], r["status"], r["suppressed"]) == (2, 1, 1, "draft", 0)
        assert r["rejected"][0]["line"] == 3 and "phone" in r["rejected"][0]["reason"]
        cid = r["id"]
        shown = client.get(f"/v1/campaigns/{cid}").json()
        assert shown["total"] == 2 and shown["counts"]["pending"] == 2 and shown["funnel"]["sent"] == 0 and shown["late_failures"] == {}
        listed, cursor = [], None
        while True:
            page = client.get("/v1/campaigns", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
            listed += [c["id"] for c in page["data"]]
            if not (cursor := page["next_cursor"]):
                break
        assert cid in listed and listed == sorted(listed)
        assert "cannot become cancelled" in assert_problem(client.post(f"/v1/campaigns/{cid}/cancel"), 409)["detail"]
        assert client.post(f"/v1/campaigns/{cid}/schedule", json={"at": "2099-01-01T09:00:00+03:00"}).json()["status"] == "scheduled"
        assert client.post(f"/v1/campaigns/{cid}/pause", json={"reason": "checking"}).json()["pause_reason"] == "checking"
        assert_problem(client.post(f"/v1/campaigns/{cid}/pause"), 409)
        assert client.post(f"/v1/campaigns/{cid}/resume").json()["status"] == "scheduled"
        test = client.post(f"/v1/campaigns/{cid}/test", json={"phone": phone()})
        assert test.status_code == 202 and test.json()["status"] == "queued"
        assert assert_problem(client.post(f"/v1/campaigns/{cid}/test", json={"phone": "x"}), 422)["errors"][0]["field"] == "phone"
        report_csv = client.get(f"/v1/campaigns/{cid}/report", params={"format": "csv"})
        assert report_csv.headers["content-type"].startswith("text/csv")
        lines = report_csv.text.strip().splitlines()
        assert lines[0].startswith("message_id,phone,variant,status") and len(lines) == 3 and a in lines[1]
        report_json = client.get(f"/v1/campaigns/{cid}/report", params={"format": "json"}).json()
        assert [row["phone"] for row in report_json] == [a, b]
        assert_problem(client.get(f"/v1/campaigns/{cid}/report", params={"format": "xml"}), 422)
        cancelled = client.post(f"/v1/campaigns/{cid}/cancel").json()
        assert cancelled["status"] == "cancelled" and cancelled["cancelled_messages"] == 2
    with api.runtime.session_factory() as s:
        actions = s.scalars(sa.select(AuditEvent.action).where(AuditEvent.subject_type == "campaign", AuditEvent.subject_id == cid)
                            .order_by(AuditEvent.id)).all()
        actors = set(s.scalars(sa.select(AuditEvent.actor).where(AuditEvent.subject_id == cid, AuditEvent.subject_type == "campaign")))
    assert actions == ["campaign.created", "campaign.scheduled", "campaign.paused", "campaign.scheduled", "campaign.cancelled"]
    assert len(actors) == 1 and actors.pop().endswith(":test-campaigns")


def test_campaign_from_a_json_body_and_its_refusals(api: ApiStack) -> None:
    message = {"body_text": "Hi {{name}}", "buttons": [{"id": "go", "title": "Go"}]}
    with api.client("campaigns") as client:
        ok = client.post("/v1/campaigns", json={"name": "Small", "message": message, "window": "09:00-21:00", "tz": "Asia/Riyadh",
                                                "recipients": [{"phone": phone(), "name": "Lina"}, {"phone": phone(), "name": "Majed"}]})
        assert ok.status_code == 201, ok.text
        assert ok.json()["imported"] == 2 and ok.json()["status"] == "scheduled"
        assert client.get(f"/v1/campaigns/{ok.json()['id']}").json()["window"] == {"start": "09:00", "end": "21:00", "tz": "Asia/Riyadh"}
        strict = assert_problem(client.post("/v1/campaigns", json={"name": "Strict", "message": message, "strict": True,
                                                                  "recipients": [{"phone": phone(), "name": "A"}, {"phone": "1", "name": "B"}]}), 422)
        assert strict["rejected"][0]["line"] == 3
        bad = assert_problem(client.post("/v1/campaigns", json={"name": "", "message": {**message, "buttons": [{"id": "go", "title": "y" * 21}]},
                                                               "recipients": [{"phone": phone(), "name": "A"}]}), 422)
        assert {"field": "buttons[0].title", "problem": "is 21 characters; the limit is 20"} in bad["errors"]
        nocol = assert_problem(client.post("/v1/campaigns", data={"name": "No column", "message": MESSAGE_JSON},
                                           files={"recipients": ("mine.csv", b"phone\n966500000009\n", "text/csv")}), 422)
        assert "mine.csv" in nocol["detail"] and "{{name}}" in nocol["detail"] and "/tmp" not in nocol["detail"]
        at = assert_problem(client.post("/v1/campaigns", json={"name": "At", "message": message, "at": "tomorrow",
                                                              "recipients": [{"phone": phone(), "name": "A"}]}), 422)
        assert at["errors"][0]["field"] == "at"
        assert_problem(client.post("/v1/campaigns", content=b"x", headers={"Content-Type": "text/plain"}), 415)


# --- retry, limits, health, docs ---------------------------------------------------------------

def test_retry_requeues_a_failed_message_with_the_key_on_record_and_refuses_what_it_must(api: ApiStack) -> None:
    with api.client("admin") as client:
        mid = client.post("/v1/messages", json=message_body()).json()["id"]
        wait_until(lambda: client.get(f"/v1/messages/{mid}").json()["status"] == "sent", 30, what="sent")
        assert "never requeued" in assert_problem(client.post("/v1/retry", json={"message_id": mid}), 409)["detail"]
        with api.runtime.session_factory.begin() as s:  # Given a campaign message that failed permanently
            cid = client.post("/v1/campaigns", json={"name": "R", "message": {"body_text": "x", "buttons": BUTTONS}, "draft": True,
                                                     "recipients": [{"phone": phone()}]}).json()["id"]
            s.execute(sa.update(Message).where(Message.campaign_id == cid).values(status="failed", last_error_code="validation_failed"))
        dry = client.post("/v1/retry", json={"campaign_id": cid, "status": "failed", "dry_run": True}).json()
        assert (dry["matched"], dry["requeued"], dry["by_error_code"]) == (1, 0, {"validation_failed": 1})
        done = client.post("/v1/retry", json={"campaign_id": cid, "status": "failed", "error_code": "validation_failed"}).json()
        assert done["requeued"] == 1 and "draft" in done["note"]
        assert_problem(client.post("/v1/retry", json={"campaign_id": cid}), 422)
        assert_problem(client.post("/v1/retry", json={"campaign_id": cid, "status": "failed", "since": "yesterday"}), 422)
        assert_problem(client.post("/v1/retry", json={"campaign_id": cid, "status": "sent"}), 422)
    with api.runtime.session_factory() as s:
        event = s.scalars(sa.select(MessageEvent).join(Message).where(Message.campaign_id == cid)).one()
    assert event.actor.endswith(":test-admin") and "operator retry" in event.reason


def test_limits_health_readiness_and_the_openapi_document(api: ApiStack) -> None:
    with api.client("admin") as client:
        limits = client.get("/v1/limits").json()
        assert limits["configured_limit"] == "200/s" and limits["scopes"][0]["scope"]
    with api.client(None) as anonymous:
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        assert anonymous.get("/readyz").json() == {"status": "ready", "database": "ok", "redis": "ok"}
        document = anonymous.get("/openapi.json").json()
        assert {"/v1/messages", "/v1/campaigns/{campaign_id}/report", "/v1/retry", "/v1/limits"} <= set(document["paths"])
        assert "MessageIn" in document["components"]["schemas"]
        assert "swagger" in anonymous.get("/docs").text.lower()


def test_readyz_is_503_naming_redis_when_redis_is_unreachable(migrated_postgres, tmp_path) -> None:  # noqa: ANN001
    """Given an API pointed at a Redis nobody listens on, /readyz says not ready and why; /healthz still answers."""
    from tests.conftest import free_port

    stack = start_api_stack(migrated_postgres, f"redis://127.0.0.1:{free_port()}/0", "http://127.0.0.1:9", tmp_path, worker=False)
    try:
        with stack.client(None) as anonymous:
            ready = anonymous.get("/readyz")
            assert ready.status_code == 503 and ready.json()["database"] == "ok" and ready.json()["redis"].startswith("unreachable")
            assert anonymous.get("/healthz").status_code == 200
    finally:
        stack.close()


# --- contacts (the consent work) ---------------------------------------------------------------

def test_contacts_show_opt_out_opt_in_and_the_optouts_list_record_the_key(api: ApiStack) -> None:
    number = phone()
    with api.client("admin") as client, api.client("campaigns") as campaigns_key:
        assert_problem(client.get(f"/v1/contacts/{number}"), 404)
        assert_problem(campaigns_key.post(f"/v1/contacts/{number}/optout"), 403)
        assert assert_problem(client.get("/v1/contacts/12"), 422)["errors"][0]["field"] == "phone"
        out = client.post(f"/v1/contacts/+{number}/optout", json={"reason": "asked by phone"}).json()
        assert out["opted_out"] and out["changed"] and out["opt_out_source"] == "operator" and out["opt_out_note"] == "asked by phone"
        assert client.post(f"/v1/contacts/{number}/optout").json()["changed"] is False
        assert out["history"][0]["actor"].endswith(":test-admin")
        listed, cursor = [], None
        while True:
            page = client.get("/v1/optouts", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
            listed += [c["phone"] for c in page["data"]]
            if not (cursor := page["next_cursor"]):
                break
        assert number in listed and listed == sorted(listed)
        back = client.post(f"/v1/contacts/{number}/optin").json()
        assert back["changed"] and not back["opted_out"] and [h["action"] for h in back["history"]] == ["opt_out", "opt_in"]
        assert number not in [c["phone"] for c in client.get("/v1/optouts", params={"limit": 500}).json()["data"]]
        shown = client.get(f"/v1/contacts/{number}").json()
        assert shown["window_open"] is False and shown["recent_messages"] == []


def test_consent_options_on_messages_and_campaigns(api: ApiStack) -> None:
    """Given an opted-out phone, a campaign import reports it as suppressed; the create options
    require_open_window, expires_at and opt_out_button are taken; a message takes the first two."""
    number = phone()
    message = {"body_text": "Hi {{name}}", "buttons": [{"id": "go", "title": "Go"}]}
    with api.client("admin") as client:
        client.post(f"/v1/contacts/{number}/optout")
        created = client.post("/v1/campaigns", json={
            "name": "Consent", "message": message, "draft": True, "require_open_window": True,
            "expires_at": "2099-01-01T00:00:00+00:00", "opt_out_button": "stop:Stop offers",
            "recipients": [{"phone": number, "name": "A"}, {"phone": phone(), "name": "B"}]})
        assert created.status_code == 201, created.text
        assert (created.json()["imported"], created.json()["suppressed"]) == (2, 1)
        bad = assert_problem(client.post("/v1/campaigns", json={"name": "Bad", "message": message, "opt_out_button": "nope",
                                                               "recipients": [{"phone": phone(), "name": "A"}]}), 422)
        assert bad["errors"][0]["field"] == "--opt-out-button"
        sent = client.post("/v1/messages", json=message_body(require_open_window=True, expires_at="2099-01-01T00:00:00Z"))
        assert sent.status_code == 202, sent.text
        late = assert_problem(client.post("/v1/messages", json=message_body(expires_at="soon")), 422)
        assert late["errors"][0]["field"] == "expires_at"
    with api.runtime.session_factory() as s:
        rows = s.execute(sa.select(Message.require_open_window, Message.expires_at).where(Message.campaign_id == created.json()["id"])).all()
        content = s.scalar(sa.select(Message.content).where(Message.campaign_id == created.json()["id"]).limit(1))
    assert all(r.require_open_window and r.expires_at.year == 2099 for r in rows)
    assert [b["id"] for b in content["buttons"]] == ["go", "stop"]


def test_hooks_are_managed_over_the_api_by_admin_keys_only(api: ApiStack) -> None:
    """Issue 14 item 4: /v1/hooks (admin): add shows the signing secret once, list shows the endpoint
    and its counts, a bad event is 422 naming the field, remove is 204 then 404; a campaigns key gets 403."""
    admin = {"Authorization": f"Bearer {api.keys['admin']}"}
    body = {"url": "http://127.0.0.1:9/hook", "events": ["message.sent", "button.tapped"]}
    assert requests.post(api.base_url + "/v1/hooks", json=body,
                         headers={"Authorization": f"Bearer {api.keys['campaigns']}"}, timeout=10).status_code == 403
    bad = requests.post(api.base_url + "/v1/hooks", json={**body, "events": ["nope"]}, headers=admin, timeout=10)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "events"
    created = requests.post(api.base_url + "/v1/hooks", json=body, headers=admin, timeout=10)
    assert created.status_code == 201, created.text
    hook = created.json()
    assert hook["secret"] and sorted(hook["events"]) == ["button.tapped", "message.sent"]
    listed = requests.get(api.base_url + "/v1/hooks", headers=admin, timeout=10).json()["data"]
    [mine] = [h for h in listed if h["id"] == hook["id"]]
    assert "secret" not in mine and mine["dead"] == 0
    assert requests.delete(f"{api.base_url}/v1/hooks/{hook['id']}", headers=admin, timeout=10).status_code == 204
    gone = requests.delete(f"{api.base_url}/v1/hooks/{hook['id']}", headers=admin, timeout=10)
    assert gone.status_code == 404 and gone.headers["content-type"].startswith("application/problem+json")
