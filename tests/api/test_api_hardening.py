"""Issue 25, the HTTP API's items: streamed downloads that give their connection back (3),
Idempotency-Key per caller with an expiry (6), a `send` key that reads only what it created (7),
GET /v1/campaigns/{id} from the tally snapshot and indexed list filters (8), and the smaller ones
of item 10 (scope before the body, JSON bombs, throttled failed authentication, Swagger UI served
from the package) plus `POST /v1/retry` with the CLI's `reason` and `force`.

Against a real `buttoncast api` process on Postgres (tests/api_stack.py) where the server's own
behaviour is the point; in process (the ASGI app, both databases) where a count of statements or
a plan is."""

from __future__ import annotations

import re
import socket
import uuid
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Iterator

import httpx
import pytest
import sqlalchemy as sa

from tests.api_stack import ApiStack, create_key, start_api_stack
from tests.conftest import REPO_ROOT, make_runtime, stack_env, wait_until
from worker.access.models import ApiKey, IdempotentRequest
from worker.access.sessions import COOKIE_NAME, start_session
from worker.access.users import create_user
from worker.models import Campaign, Contact, Message, utcnow

BUTTONS = [{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}]
BIG_TEXT = "x" * 2000             # per row: a download of BULK_ROWS rows outgrows every socket buffer
BULK_ROWS = 12_000


@pytest.fixture(scope="module")
def api(migrated_postgres, redis_url, tmp_path_factory) -> ApiStack:  # noqa: ANN001
    stack = start_api_stack(migrated_postgres, redis_url, "http://127.0.0.1:9", tmp_path_factory.mktemp("hardening"),
                            worker=False, API_KEY_CACHE_S="0.5", API_AUTH_FAILURES_PER_MINUTE="20")
    yield stack
    stack.close()


def phone() -> str:
    return "96650" + str(uuid.uuid4().int)[:7]


def message_body(**changes) -> dict:  # noqa: ANN003
    return {"phone": phone(), "body_text": "Your order has shipped", "buttons": BUTTONS, **changes}


def assert_problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return response.json()


# --- item 3: abandoned streamed downloads ----------------------------------------------------------

def _big_campaign(rt, rows: int = BULK_ROWS) -> int:  # noqa: ANN001
    """A campaign of `rows` tapped, failed-late recipients with long texts, written directly."""
    now = utcnow()
    with rt.session_factory.begin() as s:
        campaign = Campaign(name="big", phone_number_id="123456", template={"body_text": "Hi", "buttons": BUTTONS},
                            status="completed")
        s.add(campaign)
        s.flush()
        prefix = str(uuid.uuid4().int)[:4]
        s.execute(sa.insert(Message), [
            dict(campaign_id=campaign.id, phone_number_id="123456", phone=f"9665{prefix}{i:06d}",
                 content={"body_text": "Hi"}, status="sent", created_at=now, updated_at=now, sent_at=now,
                 replied_at=now, reply_button_id="yes", reply_button_title="Yes", last_error_message=BIG_TEXT)
            for i in range(rows)])
        return campaign.id


def _opted_out_contacts(rt, rows: int = BULK_ROWS) -> None:  # noqa: ANN001
    now = utcnow()
    prefix = str(uuid.uuid4().int)[:4]
    with rt.session_factory.begin() as s:
        s.execute(sa.insert(Contact), [dict(phone=f"9667{prefix}{i:06d}", first_seen_at=now, updated_at=now,
                                            opted_out_at=now, opt_out_source="operator", opt_out_note=BIG_TEXT)
                                       for i in range(rows)])


def _idle_in_transaction(rt) -> int:  # noqa: ANN001
    with rt.engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                    "AND state = 'idle in transaction'")).scalar_one()


def _start_and_abandon(base_url: str, path: str, headers: dict[str, str], rt) -> None:  # noqa: ANN001
    """GET `path` on a raw socket, read a little, leave the server blocked mid-stream (its read session
    open: seen in pg_stat_activity), then close the socket as a cancelled download does."""
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
        sock.sendall("\r\n".join(lines).encode())
        head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200"), head[:300]
        wait_until(lambda: _idle_in_transaction(rt) >= 1, 30, what=f"{path}: the download's read held mid-stream")
    finally:
        sock.close()


def test_item3_an_abandoned_report_download_returns_its_connection(api: ApiStack) -> None:
    """Given downloads far larger than the socket buffers (the API's report, the console's
    report.csv, tappers.csv and optouts.csv), when a client reads a little and closes, then within
    seconds no connection of ours is left "idle in transaction"."""
    rt = api.runtime
    campaign_id = _big_campaign(rt)
    _opted_out_contacts(rt)
    person = create_user(rt, email=f"admin-{uuid.uuid4().hex[:8]}@example.com", role="admin",
                         password="correct horse battery", actor=None)
    cookie = {"Cookie": f"{COOKIE_NAME}={start_session(rt, person, 3600)}"}
    bearer = {"Authorization": f"Bearer {api.keys['campaigns']}"}
    downloads = [(f"/v1/campaigns/{campaign_id}/report?format=csv", bearer),
                 (f"/v1/campaigns/{campaign_id}/report?format=json", bearer),
                 (f"/campaigns/{campaign_id}/report.csv", cookie),
                 (f"/campaigns/{campaign_id}/tappers.csv?button=yes", cookie),
                 ("/contacts/optouts.csv", cookie)]
    for path, headers in downloads:
        assert _idle_in_transaction(rt) == 0
        _start_and_abandon(api.base_url, path, headers, rt)
        wait_until(lambda: _idle_in_transaction(rt) == 0, 15, what=f"{path}: the abandoned download's connection released")
    with api.client("campaigns") as client:   # and a download read to its end still works
        with client.stream("GET", f"/v1/campaigns/{campaign_id}/report") as whole:
            assert sum(chunk.count(b"\n") for chunk in whole.iter_bytes()) == BULK_ROWS + 1
    assert _idle_in_transaction(rt) == 0


# --- item 6: Idempotency-Key per caller, 422 everywhere, 24 hours -----------------------------------

def test_item6_idempotency_keys_are_per_api_key_refused_for_another_body_everywhere_and_expire_after_24_hours(
        api: ApiStack) -> None:
    """Given two applications' send keys and a key the Python enqueue already used, when each sends
    the same Idempotency-Key, then each gets its own message (never another caller's answer nor a 422
    for a key it never used); another body with one's own key is 422, in the API and in
    `enqueue_message` alike; after 24 hours the same key makes a new message, and the promise is
    published in the OpenAPI document and docs/api.md."""
    from worker.errors import MessageInvalid
    from worker.sending.enqueue import enqueue_message

    other_key = create_key(api.env, f"other-app-{uuid.uuid4().hex[:6]}", "send")
    assert other_key.returncode == 0, other_key.stderr
    other = {"Authorization": f"Bearer {other_key.stdout.strip().splitlines()[-1]}"}
    key, body = f"order-{uuid.uuid4()}", message_body()
    with api.client("send") as shop:
        first = shop.post("/v1/messages", json=body, headers={"Idempotency-Key": key})
        assert first.status_code == 202, first.text
        theirs = shop.post("/v1/messages", json=body, headers={"Idempotency-Key": key, **other})
        assert theirs.status_code == 202 and "idempotent-replayed" not in theirs.headers
        assert theirs.json()["id"] != first.json()["id"]       # not the first application's answer
        their_other_body = shop.post("/v1/messages", json=message_body(), headers={"Idempotency-Key": key + "-b", **other})
        assert their_other_body.status_code == 202
        mine_again = shop.post("/v1/messages", json=body, headers={"Idempotency-Key": key})
        assert mine_again.json() == first.json() and mine_again.headers["idempotent-replayed"] == "true"
        assert "different request body" in assert_problem(
            shop.post("/v1/messages", json={**body, "body_text": "changed"}, headers={"Idempotency-Key": key}), 422)["detail"]
        shown = shop.get(f"/v1/messages/{first.json()['id']}").json()
        assert shown["idempotency_key"] == key

        # A key the Python face used is that face's own: over HTTP it is a new request, not its message.
        local_key = f"local-{uuid.uuid4()}"
        local = enqueue_message(**{k: v for k, v in message_body().items()}, idempotency_key=local_key, runtime=api.runtime)
        over_http = shop.post("/v1/messages", json=message_body(), headers={"Idempotency-Key": local_key})
        assert over_http.status_code == 202 and over_http.json()["id"] != local
        with pytest.raises(MessageInvalid) as refused:   # and there, another message with it is refused
            enqueue_message(**message_body(), idempotency_key=local_key, runtime=api.runtime)
        assert refused.value.problems[0].field == "idempotency_key" and "different message" in refused.value.problems[0].problem

        # 24 hours later (the record's clock moved back) the same key and body make a new message.
        with api.runtime.session_factory.begin() as s:
            shop_key_id = s.scalar(sa.select(ApiKey.id).where(ApiKey.prefix == api.keys["send"].split("_")[1]))
            record = s.get(IdempotentRequest, (f"apikey:{shop_key_id}", key))
            record.created_at -= timedelta(hours=25)
            record.expires_at -= timedelta(hours=25)
        later = shop.post("/v1/messages", json=body, headers={"Idempotency-Key": key})
        assert later.status_code == 202 and "idempotent-replayed" not in later.headers
        assert later.json()["id"] != first.json()["id"]
        assert shop.post("/v1/messages", json=body, headers={"Idempotency-Key": key}).json() == later.json()
        document = shop.get("/openapi.json").json()
    promise = "remembered for 24 hours"
    assert promise in document["info"]["description"]
    header = next(p for p in document["paths"]["/v1/messages"]["post"]["parameters"] if p["name"] == "Idempotency-Key")
    assert promise in header["description"]
    assert "24 hours" in (REPO_ROOT / "docs" / "api.md").read_text()


def test_item6_expired_idempotency_records_are_pruned_by_the_retention_job(database_url: str) -> None:
    """Given records expired and live, when the daily prune runs (even with RETENTION_DAYS=0, keep
    history for ever), then only the expired ones are gone."""
    from scheduler.retention import prune_expired, prune_idempotency_keys

    rt = make_runtime(stack_env(database_url=database_url, sandbox_url="http://127.0.0.1:9", RETENTION_DAYS="0"))
    try:
        now, tag = utcnow(), uuid.uuid4().hex[:8]
        with rt.session_factory.begin() as s:
            for i, age_h in enumerate((30, 25, 1)):
                created = now - timedelta(hours=age_h)
                s.add(IdempotentRequest(scope="apikey:1", key=f"{tag}-{i}", request_hash="0" * 64, api_key_id=1,
                                        created_at=created, expires_at=created + timedelta(hours=24)))
        prune_expired(rt)
        with rt.session_factory() as s:
            left = s.scalars(sa.select(IdempotentRequest.key).where(IdempotentRequest.key.like(f"{tag}-%"))).all()
        assert left == [f"{tag}-2"]
        assert prune_idempotency_keys(rt, now=now + timedelta(hours=24)) >= 1
    finally:
        rt.close()


# --- item 7: a send key reads only what it created ---------------------------------------------------

def test_item7_a_send_key_reads_only_the_messages_it_created_and_each_operation_names_its_scope(api: ApiStack) -> None:
    """Given two applications' send keys and a campaign, when one reads, then it sees its own messages
    only: another application's message (text, key) and a campaign recipient are 404, lists and a
    lookup by phone hold only its own; a campaigns key reads them all; the OpenAPI document names
    the scope of every operation."""
    other_key = create_key(api.env, f"crm-{uuid.uuid4().hex[:6]}", "send")
    other = {"Authorization": f"Bearer {other_key.stdout.strip().splitlines()[-1]}"}
    campaign_phone = phone()
    with api.client("send") as mine, api.client("campaigns") as campaigns:
        own = mine.post("/v1/messages", json=message_body(), headers={"Idempotency-Key": f"own-{uuid.uuid4()}"}).json()["id"]
        secret_body = message_body(body_text="Your one-time code is 123456")
        theirs = mine.post("/v1/messages", json=secret_body, headers={"Idempotency-Key": "crm-secret", **other}).json()["id"]
        created = campaigns.post("/v1/campaigns", json={"name": "VIP", "draft": True, "message": {
            "body_text": "Hi {{name}}", "buttons": BUTTONS}, "recipients": [{"phone": campaign_phone, "name": "Lina"}]})
        assert created.status_code == 201, created.text
        recipient = campaigns.get("/v1/messages", params={"campaign_id": created.json()["id"]}).json()["data"][0]["id"]

        assert mine.get(f"/v1/messages/{own}").status_code == 200
        for someone_elses in (theirs, recipient):
            assert_problem(mine.get(f"/v1/messages/{someone_elses}"), 404)
        listed = mine.get("/v1/messages", params={"limit": 200}).json()["data"]
        assert own in {m["id"] for m in listed} and not {theirs, recipient} & {m["id"] for m in listed}
        assert mine.get("/v1/messages", params={"phone": secret_body["phone"]}).json()["data"] == []
        assert mine.get("/v1/messages", params={"phone": campaign_phone}).json()["data"] == []
        assert mine.get("/v1/messages", params={"campaign_id": created.json()["id"]}).json()["data"] == []
        assert mine.get(f"/v1/messages/{theirs}", headers=other).json()["content"]["body_text"] == secret_body["body_text"]
        assert campaigns.get(f"/v1/messages/{theirs}").status_code == 200
        assert campaigns.get("/v1/messages", params={"phone": campaign_phone}).json()["data"][0]["id"] == recipient
        document = mine.get("/openapi.json").json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/v1/"):
                scope = operation["x-required-scope"]
                assert operation["security"] == [{"HTTPBearer": [scope]}] and f"**Scope:** `{scope}`" in operation["description"]
    assert document["paths"]["/v1/messages/{message_id}"]["get"]["x-required-scope"] == "send"
    assert "reads only the messages it created" in document["paths"]["/v1/messages"]["get"]["description"]
    assert document["paths"]["/v1/retry"]["post"]["x-required-scope"] == "admin"


# --- item 8: GET /v1/campaigns/{id} from the snapshot; indexed list filters ---------------------------

@pytest.fixture()
def in_process(database_url: str):  # noqa: ANN201
    """The ASGI app in this process on `database_url` (both databases; on Postgres the one the
    stack above uses, so nothing here empties it), with a campaigns key."""
    from fastapi.testclient import TestClient

    from worker.access.keys import create_key as make_key
    from worker.asgi import create_app
    from worker.runtime import install_runtime

    rt = make_runtime(stack_env(database_url=database_url, sandbox_url="http://127.0.0.1:9"))
    install_runtime(rt)
    try:
        _, key = make_key(rt, name="in-process", scope="campaigns", actor="test")
        with TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}) as client:
            yield rt, client
    finally:
        install_runtime(None)
        rt.close()


@contextmanager
def statements_on(table: str) -> Iterator[list[str]]:
    """Every SQL statement any engine of this process runs meanwhile that reads `table`."""
    seen: list[str] = []
    pattern = re.compile(rf"\b(FROM|JOIN)\s+\"?{table}\"?\b", re.IGNORECASE)

    def listen(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        if pattern.search(statement):
            seen.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", listen)
    try:
        yield seen
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", listen)


def test_item8_get_campaign_counts_from_the_tally_snapshot_without_scanning_messages(in_process) -> None:  # noqa: ANN001
    """Given a campaign of 300 recipients, when GET /v1/campaigns/{id} is asked twice, then the first
    counts the rows once (one scan, stored as the console's snapshot) and the second reads the
    snapshot: no statement on `messages` at all (it ran five on every request)."""
    rt, client = in_process
    campaign_id = _big_campaign(rt, rows=300)
    with statements_on("messages") as first:
        shown = client.get(f"/v1/campaigns/{campaign_id}")
    assert shown.status_code == 200, shown.text
    assert len(first) <= 1, first
    assert shown.json()["counts"]["sent"] == 300 and shown.json()["funnel"]["taps"][0]["count"] == 300
    assert shown.json()["counts_as_of"] is not None
    with statements_on("messages") as second:
        again = client.get(f"/v1/campaigns/{campaign_id}")
    assert again.json()["counts"] == shown.json()["counts"]
    assert second == []


def _plans(rt, statements: list[tuple[str, Any]]) -> list[str]:  # noqa: ANN001
    """The query plan of each (statement, parameters), as one text each."""
    out = []
    with rt.engine.connect() as conn:
        for statement, parameters in statements:
            if rt.engine.dialect.name == "sqlite":
                rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
                out.append(" | ".join(str(row[-1]) for row in rows))
            else:
                out.append(" | ".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, parameters).all()))
    return out


@contextmanager
def captured(table: str) -> Iterator[list[tuple[str, Any]]]:
    seen: list[tuple[str, Any]] = []
    pattern = re.compile(rf"\bFROM\s+\"?{table}\"?\b", re.IGNORECASE)

    def listen(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        if pattern.search(statement) and not statement.lstrip().upper().startswith("EXPLAIN"):
            seen.append((statement, parameters))

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", listen)
    try:
        yield seen
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", listen)


def test_item8_recipient_filters_optouts_and_hooks_read_through_indexes(database_url: str) -> None:
    """Given 20,000 recipients (1 in 100 tapped, 1 in 100 failed), 20,000 contacts (1 in 100 opted
    out) and 20,000 hook deliveries, when the recipients table filters by button or error code, a
    send key lists its messages, /v1/optouts pages and /v1/hooks lists, then each query's plan walks
    its own index instead of the table."""
    from worker.contacts.service import opted_out_page
    from worker.hooks.models import HookEndpoint, HookOutbox
    from worker.hooks.service import list_endpoints
    from worker.sending.history import list_messages

    rt = make_runtime(stack_env(database_url=database_url, sandbox_url="http://127.0.0.1:9"))
    try:
        rows, now, key_id = 20_000, utcnow(), 10**9 + uuid.uuid4().int % 10**6
        with rt.session_factory.begin() as s:
            campaign = Campaign(name="plans", phone_number_id="1", template={"body_text": "Hi", "buttons": BUTTONS}, status="completed")
            s.add(campaign)
            endpoints = [HookEndpoint(url=f"https://crm{i}.example.com/hook", key_salt="0" * 32, created_at=now) for i in range(2)]
            s.add_all(endpoints)
            s.flush()
            s.execute(sa.insert(Message), [dict(
                campaign_id=campaign.id, phone_number_id="1", phone=f"96658{i:07d}", content={"body_text": "Hi"},
                status="failed" if i % 100 == 1 else "sent", created_at=now, updated_at=now,
                reply_button_id="yes" if i % 100 == 0 else None, last_error_code="http_503" if i % 100 == 1 else None,
                api_key_id=key_id if i % 100 == 2 else None) for i in range(rows)])
            s.execute(sa.insert(Contact), [dict(phone=f"96658{i:07d}", first_seen_at=now, updated_at=now,
                                                opted_out_at=now if i % 100 == 0 else None) for i in range(rows)])
            s.execute(sa.insert(HookOutbox), [dict(
                endpoint_id=endpoints[i % 2].id, event_id=f"evt_{i:032x}", event_type="message.sent", data="{}",
                created_at=now, status="dead" if i % 100 == 0 else "delivered", attempts=1, next_attempt_at=now,
                retry_since=now, last_attempt_at=now - timedelta(seconds=i), last_error="HTTP 503" if i % 100 == 0 else None)
                for i in range(rows)])
        with rt.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE" if rt.engine.dialect.name == "postgresql" else "ANALYZE")
        with captured("messages") as by_button, rt.read_sessions() as s:
            assert len(list_messages(s, campaign_id=campaign.id, reply_button_id="yes", limit=50)) == 50
        with captured("messages") as by_error, rt.read_sessions() as s:
            assert len(list_messages(s, campaign_id=campaign.id, error_code="http_503", limit=50)) == 50
        with captured("messages") as by_key, rt.read_sessions() as s:
            assert len(list_messages(s, created_by_key=key_id, limit=50)) == 50
        with captured("contacts") as optouts, rt.read_sessions() as s:
            assert len(opted_out_page(s, after="", limit=100)) == 100
        with captured("hook_outbox") as hooks, rt.read_sessions() as s:
            mine = {e.id: e.dead for e in list_endpoints(s) if e.id in {endpoint.id for endpoint in endpoints}}
            assert sorted(mine.values()) == [0, 200]
        expected = [(by_button, "ix_messages_campaign_button"), (by_error, "ix_messages_campaign_error"),
                    (by_key, "ix_messages_api_key_id"), (optouts, "ix_contacts_opted_out_phone")]
        for statements, index in expected:
            (plan,) = _plans(rt, statements)
            assert index in plan, plan
        plans = _plans(rt, hooks)   # the counts per endpoint and status, each endpoint's latest failure
        assert len(plans) >= 3 and all("ix_hook_outbox_endpoint_" in p and "Seq Scan" not in p for p in plans), plans
    finally:
        rt.close()


# --- item 10: scope before the body, JSON bombs, throttled failed authentication, offline docs -----

def _raw_request(base_url: str, head: str, body: bytes, *, timeout_s: float = 15) -> bytes:
    """Send `head` and the first bytes of `body` only, then read the answer the server gives without the rest."""
    host, port = base_url.removeprefix("http://").split(":")
    answer = b""
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(head.encode() + body)
        try:
            while chunk := sock.recv(65536):
                answer += chunk
                top, _, rest = answer.partition(b"\r\n\r\n")
                length = re.search(rb"content-length: (\d+)", top, re.IGNORECASE)
                if length and len(rest) >= int(length.group(1)):
                    break
        except TimeoutError:
            pass
    return answer


def test_item10_a_key_without_the_scope_is_refused_before_a_campaign_upload_is_read(api: ApiStack) -> None:
    """Given a send key, when it starts a 64 MB campaign upload, then 403 comes back at once, before
    the body: the server never waits for (nor spools) the 64 MB."""
    declared = 64 * 1024 * 1024
    boundary = "x" * 16
    head = (f"POST /v1/campaigns HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {api.keys['send']}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {declared}\r\n\r\n")
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"recipients\"; filename=\"r.csv\"\r\n\r\n"
            "phone\n" + "966500000000\n" * 100).encode()
    answer = _raw_request(api.base_url, head, part)
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert b"this key has scope send; this needs campaigns" in answer


def test_item10_json_depth_bombs_and_huge_numbers_are_refused_as_invalid_input_not_500(api: ApiStack) -> None:
    """Given JSON nested 100,000 deep or 40 deep, a 5,000-digit integer, NaN, in each kind of body
    (our own parser: messages, campaigns JSON and the multipart `message` field; FastAPI's: retry),
    then each is a 422 problem naming the body and saying what is wrong, never a 500."""
    bomb = "[" * 100_000 + "]" * 100_000
    deep = '{"phone": ' + "[" * 40 + "]" * 40 + "}"
    huge = '{"phone": 1' + "0" * 5000 + "}"
    with api.client("admin") as client:
        for path in ("/v1/messages", "/v1/campaigns"):
            for body, says in ((bomb, "nested deeper than 32 levels"), (deep, "nested deeper than 32 levels"),
                               (huge, "a number of 5001 characters; the limit is 40"), ('{"phone": NaN}', "NaN")):
                problem = assert_problem(client.post(path, content=body, headers={"Content-Type": "application/json"}), 422)
                assert problem["errors"][0]["field"] == "body" and says in problem["errors"][0]["problem"], (path, problem)
        multipart = client.post("/v1/campaigns", data={"name": "Bomb", "message": bomb},
                                files={"recipients": ("r.csv", b"phone\n966500000001\n", "text/csv")})
        assert {"field": "message", "problem": "is nested deeper than 32 levels"} in assert_problem(multipart, 422)["errors"]
        for body, says in ((bomb, "nested too deeply"), ('{"message_id": 1' + "0" * 5000 + "}", "number too long")):
            problem = assert_problem(client.post("/v1/retry", content=body, headers={"Content-Type": "application/json"}), 422)
            assert problem["errors"][0]["field"] == "body" and says in problem["errors"][0]["problem"], problem


def test_item10_failed_authentication_is_throttled_per_address_with_retry_after(api: ApiStack) -> None:
    """Given API_AUTH_FAILURES_PER_MINUTE=20, when one address fails 20 times, then its next request
    is 429 with Retry-After, without a lookup; once that wait passes it may try again."""
    with api.client(None) as anonymous:
        answers = [anonymous.get("/v1/messages", headers={"Authorization": f"Bearer bc_{i:08d}_guess"}) for i in range(20)]
        assert [a.status_code for a in answers] == [401] * 20
        blocked = anonymous.get("/v1/messages", headers={"Authorization": "Bearer bc_00000000_more"})
        assert_problem(blocked, 429)
        wait_s = int(blocked.headers["Retry-After"])
        assert 1 <= wait_s <= 60
        assert anonymous.get("/v1/messages").status_code == 429    # no key at all is throttled too
    with api.client("send") as client:   # the limit is on failures: once a token is back, a good key passes
        wait_until(lambda: client.get("/v1/messages").status_code == 200, 60, what="the address let through again")


def test_item10_the_failed_authentication_throttle_holds_a_bounded_number_of_addresses() -> None:
    from worker.api.auth import FailedAuthThrottle

    now = [0.0]
    throttle = FailedAuthThrottle(per_minute=2, clock=lambda: now[0], max_addresses=3)
    for address in ("a", "b", "c", "d", "e"):
        throttle.failed(address)
        throttle.failed(address)
    assert len(throttle._buckets) == 3 and throttle.retry_after("e") == 30 and throttle.retry_after("a") is None
    now[0] = 30.0
    assert throttle.retry_after("e") is None


def test_item10_docs_load_swagger_ui_from_the_package_not_a_cdn(api: ApiStack) -> None:
    """Given no internet access, /docs still works: its script and stylesheet are served by the API
    itself, from the installed package, at a pinned version."""
    with api.client(None) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert sources and all(s.startswith("/docs/assets/") for s in sources), sources
        for source in sources:
            asset = client.get(source)
            assert asset.status_code == 200 and len(asset.content) > 0, source
        assert "SwaggerUIBundle" in client.get("/docs/assets/swagger-ui-bundle.js").text
        assert client.get("/redoc").status_code == 404   # its page loads from a CDN too: not served


# --- left open: POST /v1/retry with the CLI's reason and force ---------------------------------------

def test_left_open_post_retry_takes_reason_and_force_with_the_rules_and_words_of_the_cli(api: ApiStack) -> None:
    """Given a campaign with a late failure of each of two classes, when the API retries by `reason`,
    then window_closed is planned and requeued, opted_out is refused as the CLI refuses it (409,
    "pass --force"), and with `force` it goes ahead."""
    now = utcnow()
    with api.runtime.session_factory.begin() as s:
        campaign = Campaign(name="late", phone_number_id="123456", template={"body_text": "Hi", "buttons": BUTTONS},
                            status="completed")
        s.add(campaign)
        s.flush()
        for klass, code in (("window_closed", "131047"), ("opted_out", "131050")):
            s.add(Message(campaign_id=campaign.id, phone_number_id="123456", phone=phone(), content={"body_text": "Hi"},
                          status="sent", vendor_message_id=f"wamid.{uuid.uuid4().hex}", sent_at=now, created_at=now,
                          updated_at=now, delivery_status="failed", failure_code=code, failure_class=klass))
        campaign_id = campaign.id
    with api.client("admin") as client:
        planned = client.post("/v1/retry", json={"campaign_id": campaign_id, "reason": "window_closed", "dry_run": True})
        assert planned.status_code == 200, planned.text
        assert planned.json()["matched"] == 1 and planned.json()["by_error_code"] == {"131047": 1}
        refused = assert_problem(client.post("/v1/retry", json={"campaign_id": campaign_id, "reason": "opted_out"}), 409)
        assert "--reason opted_out is refused" in refused["detail"] and "pass --force to resend anyway" in refused["detail"]
        forced = client.post("/v1/retry", json={"campaign_id": campaign_id, "reason": "opted_out", "force": True})
        assert forced.status_code == 200 and forced.json()["requeued"] == 1 and "(forced)" in forced.json()["selection"]
        both = assert_problem(client.post("/v1/retry", json={"campaign_id": campaign_id, "reason": "other", "status": "failed"}), 422)
        assert "do not combine it with --status" in both["errors"][0]["problem"]
        assert_problem(client.post("/v1/retry", json={"campaign_id": campaign_id, "reason": "nonsense"}), 422)
