"""Segments through their faces (issue 22 item 2), on SQLite and Postgres: `buttoncast segment
create|count|list|show|export|delete` as an operator runs them, and `/v1/segments` as a client
calls it. Both call worker.contacts.segments; these tests check what each face shows of it."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from tests.conftest import make_runtime, stack_env
from worker.access.keys import create_key
from worker.cli import main
from worker.models import Campaign, Contact, ContactTag, Message, utcnow
from worker.runtime import install_runtime

RIYADH_VIPS = {"all": [{"attribute": "city", "equals": "Riyadh"}, {"tag": "vip"}]}
PHONES = ["966500000101", "966500000102", "966500000103", "966500000104"]


@pytest.fixture()
def env(empty_database):  # noqa: ANN001
    return stack_env(database_url=empty_database, sandbox_url="http://127.0.0.1:9")


@pytest.fixture()
def rt(env):  # noqa: ANN001, ANN201
    runtime = make_runtime(env)
    now = utcnow()
    with runtime.session_factory.begin() as s:
        s.add_all([
            Contact(phone=PHONES[0], attributes={"city": "Riyadh", "name": "Lina"}),
            Contact(phone=PHONES[1], attributes={"city": "Riyadh", "plan": "=HYPERLINK(1)"}),
            Contact(phone=PHONES[2], attributes={"city": "Jeddah"}),
            Contact(phone=PHONES[3], attributes={"city": "Riyadh"}, opted_out_at=now),
        ])
        s.flush()
        s.add_all([ContactTag(phone=p, tag=t) for p, t in ((PHONES[0], "vip"), (PHONES[0], "new"), (PHONES[1], "vip"),
                                                            (PHONES[3], "vip"))])
    yield runtime
    runtime.close()


def run(env: dict[str, str], *args: str):  # noqa: ANN201
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def rules_file(tmp_path, rules, name: str = "rules.json") -> str:  # noqa: ANN001
    path = tmp_path / name
    path.write_text(rules if isinstance(rules, str) else json.dumps(rules))
    return str(path)


# --- the CLI -------------------------------------------------------------------------------------

def test_an_operator_creates_counts_lists_shows_exports_and_deletes_a_segment(env, rt, tmp_path) -> None:  # noqa: ANN001
    created = run(env, "segment", "create", "--name", "Riyadh VIPs", "--rules", rules_file(tmp_path, RIYADH_VIPS))
    assert created.exit_code == 0, created.output
    segment_id = int(created.stdout.splitlines()[-1])
    assert "city is Riyadh and has tag vip" in created.stderr and "members: 2" in created.stderr

    counted = run(env, "segment", "count", str(segment_id))
    assert counted.exit_code == 0 and counted.stdout.splitlines()[-1] == "2"      # the opted-out one is not counted
    unsaved = run(env, "segment", "count", "--rules", rules_file(tmp_path, {"attribute": "city", "exists": True}, "u.json"))
    assert unsaved.exit_code == 0 and unsaved.stdout.splitlines()[-1] == "3"

    listed = run(env, "segment", "list").stdout
    assert f"{segment_id}  Riyadh VIPs" in listed and "rules: city is Riyadh and has tag vip" in listed

    shown = run(env, "segment", "show", str(segment_id)).stdout
    assert "rules:    city is Riyadh and has tag vip" in shown and "members:  2" in shown
    assert f"    {PHONES[0]}  city=Riyadh, name=Lina" in shown and PHONES[1] in shown and PHONES[3] not in shown

    exported = run(env, "segment", "export", str(segment_id))
    assert exported.exit_code == 0 and "exported 2 member(s)" in exported.stderr
    rows = list(csv.reader(io.StringIO(exported.stdout)))
    assert rows == [["phone", "city", "name", "plan", "tags"],
                    [PHONES[0], "Riyadh", "Lina", "", "new;vip"],
                    [PHONES[1], "Riyadh", "", "'=HYPERLINK(1)", "vip"]]   # never a live formula
    out = tmp_path / "members.csv"
    assert run(env, "segment", "export", str(segment_id), "--output", str(out)).stdout == ""
    assert list(csv.reader(io.StringIO(out.read_text(encoding="utf-8")))) == rows

    deleted = run(env, "segment", "delete", str(segment_id))
    assert deleted.exit_code == 0 and deleted.stdout.strip() == f"segment {segment_id} deleted"
    gone = run(env, "segment", "show", str(segment_id))
    assert gone.exit_code == 1 and f"no segment {segment_id}" in gone.stderr


def test_bad_rules_files_are_refused_with_the_field_named_and_nothing_is_created(env, rt, tmp_path) -> None:  # noqa: ANN001
    with rt.session_factory.begin() as s:
        campaign = Campaign(name="Spring sale", phone_number_id="1",
                            template={"body_text": "Hi", "buttons": [{"id": "reserve", "title": "Reserve"}]})
        s.add(campaign)
        s.flush()
        campaign_id = campaign.id
    cases = [
        ("{not json", "invalid: --rules: "),
        ({"all": [{"tag": "vip"}, {"colour": "red"}]}, "invalid: rules.all[1].colour: is not a rule"),
        ({"any": [{"tapped": {"campaign": campaign_id, "button": "nope"}}]},
         f"invalid: rules.any[0].tapped.button: campaign {campaign_id} has no button 'nope'; its buttons are: reserve"),
        ({"last_sent_within": "7x"}, "invalid: rules.last_sent_within: '7x' is not a duration"),
    ]
    for rules, said in cases:
        refused = run(env, "segment", "create", "--name", "bad", "--rules", rules_file(tmp_path, rules))
        assert refused.exit_code == 2 and said in refused.stderr, refused.stderr
        counted = run(env, "segment", "count", "--rules", rules_file(tmp_path, rules))
        assert counted.exit_code == 2 and said in counted.stderr
    assert run(env, "segment", "create", "--name", "ok", "--rules", rules_file(tmp_path, {"tag": "vip"})).exit_code == 0
    again = run(env, "segment", "create", "--name", "ok", "--rules", rules_file(tmp_path, {"tag": "vip"}))
    assert again.exit_code == 2 and "invalid: name: segment " in again.stderr and "is already named 'ok'" in again.stderr
    listed = run(env, "segment", "list").stdout
    assert listed.count("rules:") == 1
    neither = run(env, "segment", "count")
    assert neither.exit_code == 2 and "give a segment id or --rules FILE" in neither.stderr


def test_delete_is_refused_while_another_segment_uses_it(env, rt, tmp_path) -> None:  # noqa: ANN001
    vip = int(run(env, "segment", "create", "--name", "VIPs", "--rules", rules_file(tmp_path, {"tag": "vip"})).stdout.split()[-1])
    run(env, "segment", "create", "--name", "Not VIPs", "--rules", rules_file(tmp_path, {"not": {"segment": vip}}))
    refused = run(env, "segment", "delete", str(vip))
    assert refused.exit_code == 2 and "invalid: segment: segment" in refused.stderr and "Not VIPs" in refused.stderr
    assert run(env, "segment", "count", str(vip)).stdout.splitlines()[-1] == "2"


# --- the HTTP API --------------------------------------------------------------------------------

@pytest.fixture()
def api(rt):  # noqa: ANN001, ANN201
    install_runtime(rt)
    try:
        from worker.asgi import create_app

        keys = {scope: create_key(rt, name=f"segments-{scope}", scope=scope, actor="test")[1]
                for scope in ("send", "campaigns")}
        with TestClient(create_app()) as client:
            client.keys = keys
            client.headers["Authorization"] = f"Bearer {keys['campaigns']}"
            yield client
    finally:
        install_runtime(None)


def test_a_client_creates_lists_gets_counts_and_deletes_segments(api, rt) -> None:  # noqa: ANN001
    created = api.post("/v1/segments", json={"name": "Riyadh VIPs", "rules": RIYADH_VIPS})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["name"] == "Riyadh VIPs" and body["rules"] == RIYADH_VIPS and body["count"] == 2
    assert body["description"] == "city is Riyadh and has tag vip" and body["created_by"].startswith("apikey:")
    segment_id = body["id"]

    listed = api.get("/v1/segments").json()["data"]
    assert [(s["id"], s["description"]) for s in listed] == [(segment_id, "city is Riyadh and has tag vip")]
    got = api.get(f"/v1/segments/{segment_id}").json()
    assert got["count"] == 2 and got["problem"] is None

    counted = api.post("/v1/segments/count", json={"rules": {"attribute": "city", "equals": "Riyadh"}})
    assert counted.status_code == 200 and counted.json() == {"count": 2}

    with rt.session_factory.begin() as s:   # a new member shows at the next count: rules, never a list
        s.add(Contact(phone="966500000105", attributes={"city": "Riyadh"}))
        s.flush()
        s.add(ContactTag(phone="966500000105", tag="vip"))
    assert api.get(f"/v1/segments/{segment_id}").json()["count"] == 3

    assert api.delete(f"/v1/segments/{segment_id}").status_code == 204
    missing = api.get(f"/v1/segments/{segment_id}")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("application/problem+json")
    assert api.delete(f"/v1/segments/{segment_id}").status_code == 404


def test_the_api_names_each_problem_and_refuses_what_a_key_may_not_do(api, rt) -> None:  # noqa: ANN001
    with rt.session_factory.begin() as s:
        campaign = Campaign(name="Spring sale", phone_number_id="1",
                            template={"body_text": "Hi", "buttons": [{"id": "reserve", "title": "Reserve"}]})
        s.add(campaign)
        s.flush()
        s.add(Message(campaign_id=campaign.id, phone_number_id="1", phone=PHONES[0], content={}, reply_button_id="reserve"))
        campaign_id = campaign.id
    bad = api.post("/v1/segments", json={"name": "x", "rules": {"any": [{"tapped": {"campaign": campaign_id, "button": "no"}},
                                                                        {"window": "ajar"}]}})
    assert bad.status_code == 422
    assert [e["field"] for e in bad.json()["errors"]] == ["rules.any[0].tapped.button", "rules.any[1].window"]
    counted = api.post("/v1/segments/count", json={"rules": {"last_inbound_within": "0d"}})
    assert counted.status_code == 422 and counted.json()["errors"][0]["field"] == "rules.last_inbound_within"
    assert api.post("/v1/segments", json={"name": "", "rules": {"tag": "vip"}}).json()["errors"][0]["field"] == "name"
    assert api.get("/v1/segments").json()["data"] == []

    tappers = api.post("/v1/segments", json={"name": "Tappers", "rules": {"tapped": {"campaign": campaign_id}}}).json()
    assert tappers["count"] == 1 and tappers["description"] == f"tapped any button in campaign {campaign_id} (Spring sale)"
    taken = api.post("/v1/segments", json={"name": "Tappers", "rules": {"tag": "vip"}})
    assert taken.status_code == 422 and taken.json()["errors"][0]["field"] == "name"
    user = api.post("/v1/segments", json={"name": "Not tappers", "rules": {"not": {"segment": tappers["id"]}}}).json()
    assert user["count"] == 2
    refused = api.delete(f"/v1/segments/{tappers['id']}")
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "segment"

    send_only = {"Authorization": f"Bearer {api.keys['send']}"}
    assert api.get("/v1/segments", headers=send_only).status_code == 403
    assert api.post("/v1/segments/count", json={"rules": {"tag": "vip"}}, headers=send_only).status_code == 403
    assert api.get("/v1/segments", headers={"Authorization": ""}).status_code == 401
