"""A/B tests over HTTP (issue 23): `POST /v1/campaigns` with `variants` (the CSV form and a segment),
its refusals (422 naming the field, nothing created), the campaign resource's `experiment`, and
`POST /v1/campaigns/{id}/decide` (200, 409, 422, the key in the audit trail, the scope), on SQLite
and Postgres. The rules are scheduler.experiments'; these tests check what the API shows of them."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from tests.conftest import make_runtime, stack_env
from worker.access.keys import create_key
from worker.audit import AuditEvent
from worker.models import Campaign, Contact, Experiment, Message, utcnow
from worker.runtime import install_runtime

BUTTONS = [{"id": "reserve", "title": "Reserve"}, {"id": "later", "title": "Later"}]
A = {"body_text": "Hello {{name}}, spring sale", "buttons": BUTTONS}
B = {"body_text": "{{name}}, 20% off this weekend only", "buttons": BUTTONS}
C = {"body_text": "Last chance, {{name}}", "buttons": [{"id": "reserve", "title": "Book now"}]}
RECIPIENTS = 40


@pytest.fixture()
def rt(empty_database: str) -> Any:
    runtime = make_runtime(stack_env(database_url=empty_database, sandbox_url="http://127.0.0.1:9",
                                     OPT_OUT_BUTTON_IDS="stop"))
    with runtime.session_factory.begin() as s:
        s.add_all([Contact(phone=f"9665000002{i:02d}", attributes={"city": "Riyadh", "name": f"n{i}"}) for i in range(6)])
    yield runtime
    runtime.close()


@pytest.fixture()
def api(rt: Any) -> Any:
    install_runtime(rt)
    try:
        from worker.asgi import create_app

        keys = {scope: create_key(rt, name=f"ab-{scope}", scope=scope, actor="test")[1] for scope in ("send", "campaigns")}
        with TestClient(create_app()) as client:
            client.keys = keys
            client.headers["Authorization"] = f"Bearer {keys['campaigns']}"
            yield client
    finally:
        install_runtime(None)


def recipients_csv(n: int = RECIPIENTS) -> bytes:
    return ("phone,name\n" + "".join(f"+9665{i:08d},n{i}\n" for i in range(n))).encode()


def create_by_form(api: Any, variants: list[Any], **fields: str) -> Any:
    """The CSV form, as curl sends it: each variant a file part (`-F variants=@a.json`), in order."""
    files = [("recipients", ("people.csv", recipients_csv(), "text/csv"))]
    files += [("variants", (f"{i}.json", v if isinstance(v, str) else json.dumps(v), "application/json"))
              for i, v in enumerate(variants)]
    return api.post("/v1/campaigns", data={"name": "Spring A/B", **fields}, files=files)


def campaigns_count(rt: Any) -> int:
    with rt.session_factory() as s:
        return s.scalar(sa.select(sa.func.count()).select_from(Campaign))


def segment(api: Any) -> int:
    made = api.post("/v1/segments", json={"name": "Riyadh", "rules": {"attribute": "city", "equals": "Riyadh"}})
    assert made.status_code == 201, made.text
    return made.json()["id"]


# --- create ------------------------------------------------------------------------------------

def test_a_csv_form_with_two_variant_files_creates_a_test_that_holds_the_rest_for_the_winner(api: Any, rt: Any) -> None:
    made = create_by_form(api, [A, B], test_share="0.5", decide_after="4h", metric="taps", default_variant="B",
                          draft="true")
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["imported"] == RECIPIENTS
    exp = body["experiment"]
    assert (exp["phase"], exp["test_share"], exp["decide_after"], exp["metric"], exp["default_variant"]) == \
        ("testing", 0.5, "4h", "taps", "B")
    assert [v["variant"] for v in exp["variants"]] == ["A", "B"]
    assert [v["message"]["body_text"] for v in exp["variants"]] == [A["body_text"], B["body_text"]]
    in_test = sum(v["recipients"] for v in exp["variants"])
    assert in_test + exp["held"] == RECIPIENTS and 0 < in_test < RECIPIENTS
    assert all(v["sent"] == 0 and v["rate"] is None for v in exp["variants"])
    with rt.session_factory() as s:
        statuses = dict(s.execute(sa.select(Message.status, sa.func.count()).group_by(Message.status)).all())
    assert statuses == {"pending": in_test, "held": exp["held"]}


def test_a_variant_may_also_come_as_a_text_field_and_a_campaign_of_one_message_has_no_experiment(api: Any) -> None:
    made = api.post("/v1/campaigns", data={"name": "Texts", "variants": [json.dumps(A), json.dumps(B)]},
                    files={"recipients": ("people.csv", recipients_csv(4), "text/csv")})
    assert made.status_code == 201, made.text
    assert made.json()["experiment"]["phase"] == "report"   # test_share 1 by default: every recipient in the test
    plain = api.post("/v1/campaigns", data={"name": "Plain", "message": json.dumps(A)},
                     files={"recipients": ("people.csv", recipients_csv(4), "text/csv")})
    assert plain.status_code == 201, plain.text
    assert plain.json()["experiment"] is None
    assert api.get(f"/v1/campaigns/{plain.json()['id']}").json()["experiment"] is None


def test_a_json_body_with_segment_id_takes_variants_too(api: Any, rt: Any) -> None:
    made = api.post("/v1/campaigns", json={"name": "Segment A/B", "segment_id": segment(api), "variants": [A, B, C],
                                           "test_share": 0.3, "decide_after": "1d", "metric": "replies"})
    assert made.status_code == 201, made.text
    exp = made.json()["experiment"]
    assert exp["phase"] == "testing" and exp["metric"] == "replies" and exp["decide_after"] == "1d"
    assert [v["variant"] for v in exp["variants"]] == ["A", "B", "C"]
    assert all(v["recipients"] == 0 for v in exp["variants"])   # members are resolved when it starts
    with rt.session_factory() as s:
        stored = s.get(Experiment, made.json()["id"])
        assert (stored.test_share, stored.decide_after_s, stored.metric) == (0.3, 86_400, "replies")
        assert len(s.get(Campaign, made.json()["id"]).variants) == 3


REFUSALS = [
    (dict(variants=[A]), "variants"),
    (dict(variants=[A, B, C, A]), "variants"),
    (dict(variants=[A, B], test_share=0), "test_share"),
    (dict(variants=[A, B], test_share=1, decide_after="4h"), "decide_after"),
    (dict(variants=[A, B], metric="clicks"), "metric"),
    (dict(variants=[A, {"body_text": "", "buttons": BUTTONS}]), "variants[1]: body_text"),
    (dict(variants=[A, B], default_variant="D"), "default_variant"),
    (dict(variants=[A, B], message=A), "variants"),
    (dict(message=A, test_share=0.5, decide_after="4h"), "decide_after"),   # a test's options without its variants
]


@pytest.mark.parametrize(("fields", "field"), REFUSALS)
def test_bad_experiments_in_the_csv_form_are_422_naming_the_field_and_nothing_is_created(
        api: Any, rt: Any, fields: dict, field: str) -> None:
    variants = fields.get("variants", [])
    texts = {k: (json.dumps(v) if isinstance(v, dict) else str(v)) for k, v in fields.items() if k != "variants"}
    refused = create_by_form(api, variants, **texts)
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert field in [p["field"] for p in refused.json()["errors"]], refused.text
    assert campaigns_count(rt) == 0


@pytest.mark.parametrize(("fields", "field"), REFUSALS)
def test_bad_experiments_from_a_segment_are_422_naming_the_field_and_nothing_is_created(
        api: Any, rt: Any, fields: dict, field: str) -> None:
    refused = api.post("/v1/campaigns", json={"name": "x", "segment_id": segment(api), **fields})
    assert refused.status_code == 422, refused.text
    assert field in [p["field"] for p in refused.json()["errors"]], refused.text
    assert campaigns_count(rt) == 0


def test_a_variant_part_that_is_not_json_is_named_by_its_place(api: Any, rt: Any) -> None:
    refused = create_by_form(api, [A, "{not json"], test_share="0.5", decide_after="4h")
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["field"] == "variants[1]"
    assert campaigns_count(rt) == 0


# --- the resource and the decision ----------------------------------------------------------------

def _record_the_test(rt: Any, campaign_id: int) -> None:
    """The test group was sent; variant B's recipients tapped Reserve, A's one tapped the opt-out button."""
    now = utcnow()
    with rt.session_factory.begin() as s:
        for m in s.scalars(sa.select(Message).where(Message.campaign_id == campaign_id, Message.variant.is_not(None))):
            m.status, m.sent_at, m.delivered_at = "sent", now, now
            if m.variant == "B":
                m.replied_at, m.reply_button_id = now, "reserve"
        first_a = s.scalars(sa.select(Message).where(Message.campaign_id == campaign_id, Message.variant == "A")
                            .order_by(Message.id)).first()
        first_a.replied_at, first_a.reply_button_id = now, "stop"


def test_the_resource_shows_each_variant_and_decide_sends_the_choice_to_the_held_rest(api: Any, rt: Any) -> None:
    made = create_by_form(api, [A, B], test_share="0.5", decide_after="4h", opt_out_button="stop:Stop offers")
    assert made.status_code == 201, made.text
    cid = made.json()["id"]
    _record_the_test(rt, cid)

    exp = api.get(f"/v1/campaigns/{cid}").json()["experiment"]
    a, b = exp["variants"]
    assert a["message"]["buttons"][-1] == {"id": "stop", "title": "Stop offers"}   # each variant got the opt-out button
    assert a["sent"] == a["delivered"] == a["recipients"] and a["taps"] == {"stop": 1} and a["tapped"] == 0
    assert a["rate"] == 0.0 and a["rate_low"] == pytest.approx(0.0, abs=1e-9) and 0 < a["rate_high"] < 1
    assert b["taps"] == {"reserve": b["sent"]} and b["tapped"] == b["replied"] == b["sent"] and b["rate"] == 1.0
    assert exp["decision"] is None and exp["decided_at"] is None and exp["held"] > 0
    held = exp["held"]

    decided = api.post(f"/v1/campaigns/{cid}/decide", json={"variant": "A"})
    assert decided.status_code == 200, decided.text
    exp = decided.json()["experiment"]
    assert (exp["phase"], exp["sent_variant"], exp["held"]) == ("decided", "A", 0)
    assert exp["decided_by"].startswith("apikey:") and exp["decided_by"].endswith(":ab-campaigns")
    assert exp["decision"]["chosen_by"] == "operator" and exp["decision"]["released"] == held
    assert exp["decision"]["outcome"] and exp["decision"]["reason"]
    assert set(exp["decision"]["rates"]) == {"A", "B"}
    assert decided.json()["id"] == cid and "counts" in decided.json()

    again = api.post(f"/v1/campaigns/{cid}/decide", json={"variant": "B"})
    assert again.status_code == 409, again.text
    assert again.json()["type"].endswith(":conflict") and "decided already" in again.json()["detail"]
    with rt.session_factory() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Message).where(
            Message.campaign_id == cid, Message.status == "held")) == 0
        audit = s.execute(sa.select(AuditEvent.actor).where(
            AuditEvent.action == "campaign.decided", AuditEvent.subject_id == cid)).scalars().all()
    assert len(audit) == 1 and audit[0].endswith(":ab-campaigns")
    shown = api.get("/v1/messages", params={"campaign_id": cid, "limit": 200}).json()["data"]
    assert {m["variant"] for m in shown} == {"A", "B"} and len(shown) == RECIPIENTS


def test_decide_refuses_a_letter_the_test_has_not_a_report_only_test_and_a_send_key(api: Any, rt: Any) -> None:
    cid = create_by_form(api, [A, B], test_share="0.5", decide_after="4h").json()["id"]
    bad = api.post(f"/v1/campaigns/{cid}/decide", json={"variant": "C"})
    assert bad.status_code == 422, bad.text
    assert bad.json()["errors"][0]["field"] == "variant"
    forbidden = api.post(f"/v1/campaigns/{cid}/decide", json={"variant": "B"},
                         headers={"Authorization": f"Bearer {api.keys['send']}"})
    assert forbidden.status_code == 403, forbidden.text
    with rt.session_factory() as s:
        assert s.get(Experiment, cid).phase == "testing"
    report_only = create_by_form(api, [A, B]).json()["id"]
    assert api.post(f"/v1/campaigns/{report_only}/decide", json={"variant": "B"}).status_code == 409
    plain = api.post("/v1/campaigns", data={"name": "Plain", "message": json.dumps(A)},
                     files={"recipients": ("people.csv", recipients_csv(2), "text/csv")}).json()["id"]
    assert api.post(f"/v1/campaigns/{plain}/decide", json={"variant": "A"}).status_code == 409
    assert api.post("/v1/campaigns/999999/decide", json={"variant": "A"}).status_code == 404


def test_decide_without_a_variant_takes_the_statistics_verdict(api: Any) -> None:
    cid = create_by_form(api, [A, B], test_share="0.5", decide_after="4h", default_variant="B").json()["id"]
    decided = api.post(f"/v1/campaigns/{cid}/decide")
    assert decided.status_code == 200, decided.text
    exp = decided.json()["experiment"]
    # nothing was sent: no clear winner, so the default variant goes to the rest
    assert exp["winner"] is None and exp["sent_variant"] == "B" and exp["decision"]["chosen_by"] == "engine"
