"""`POST /v1/campaigns` with `segment_id` (and `every`), and `POST /v1/campaigns/{id}/follow-up`."""

from __future__ import annotations

from typing import Any

import pytest

from tests.contacts.test_segments_faces import api, env, rt  # noqa: F401 - the fixtures
from worker.models import Campaign, Message, utcnow

MESSAGE = {"body_text": "Hello {{name}}", "buttons": [{"id": "reserve", "title": "Reserve"}]}


def _segment(api: Any) -> int:
    made = api.post("/v1/segments", json={"name": "Riyadh", "rules": {"attribute": "city", "equals": "Riyadh"}})
    assert made.status_code == 201, made.text
    return made.json()["id"]


def test_a_campaign_and_a_series_from_a_segment(api: Any, rt: Any) -> None:
    seg = _segment(api)
    made = api.post("/v1/campaigns", json={"name": "From segment", "message": MESSAGE, "segment_id": seg,
                                           "phone_number_id": "123456"})
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["imported"] == 0 and body["status"] == "scheduled"
    assert any("2 member(s) now" in line for line in body["audience"])
    series = api.post("/v1/campaigns", json={"name": "Weekly", "message": MESSAGE, "segment_id": seg, "every": "1w",
                                             "phone_number_id": "123456"})
    assert series.status_code == 201, series.text
    with rt.session_factory() as session:
        stored = session.get(Campaign, series.json()["id"])
        assert stored.series_every_s == 7 * 86_400 and stored.audience == {"segment": seg}


@pytest.mark.parametrize(("extra", "field"), [
    ({"recipients": [{"phone": "966500000001"}]}, "recipients"),
    ({"strict": True}, "strict"),
    ({"every": "0d"}, "every"),
    ({"segment_id": "x"}, "segment_id"),
    ({"segment_id": 999}, "segment"),
])
def test_bad_segment_campaigns_are_422_with_the_field(api: Any, rt: Any, extra: dict, field: str) -> None:
    body = {"name": "x", "message": MESSAGE, "segment_id": _segment(api), "phone_number_id": "123456", **extra}
    refused = api.post("/v1/campaigns", json=body)
    assert refused.status_code == 422, refused.text
    assert field in [p["field"] for p in refused.json()["errors"]]
    with rt.session_factory() as session:
        assert session.query(Campaign).count() == 0


def test_a_follow_up_of_everyone_who_tapped(api: Any, rt: Any) -> None:
    from scheduler import audience
    from scheduler.campaigns import create_campaign

    with rt.session_factory.begin() as session:
        source = create_campaign(session, name="source", phone_number_id="123456", template=MESSAGE, draft=True)
        for phone, tapped in (("966500000101", "reserve"), ("966500000102", None)):
            session.add(Message(campaign_id=source.id, phone_number_id="123456", phone=phone, content=MESSAGE,
                                status="sent", sent_at=utcnow(), reply_button_id=tapped))
        source_id = source.id
    made = api.post(f"/v1/campaigns/{source_id}/follow-up",
                    json={"message": {"body_text": "Thanks {{name}}", "buttons": [{"id": "ok", "title": "OK"}]},
                          "result": "tapped", "button": "reserve"})
    assert made.status_code == 201, made.text
    follow_id = made.json()["id"]
    assert audience.resolve(rt.session_factory, follow_id)
    with rt.session_factory() as session:
        assert [m.phone for m in session.query(Message).filter_by(campaign_id=follow_id)] == ["966500000101"]
    refused = api.post(f"/v1/campaigns/{source_id}/follow-up",
                       json={"message": MESSAGE, "result": "tapped", "button": "nope"})
    assert refused.status_code == 422 and "nope" in refused.text
