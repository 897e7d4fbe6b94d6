"""Segments (issue 22 item 2): rules validated with field-named errors, compiled to SQL over the
contacts, counted live; saved, described in words, deleted. Each test runs on SQLite and Postgres.

One small world (`world`) serves every rule test:

    phone  attributes                    tags      window / last sent          campaign "Spring sale"
    A      city=Riyadh plan=gold         vip       open (1h ago) / 2 days ago  sent, delivered, read, tapped Reserve
    B      city=Jeddah                   -         closed (3d ago) / 10 days   sent, delivered (no read receipt)
    C      (none)                        vip, new  never wrote / never sent    sent, nothing more
    D      city=Riyadh  OPTED OUT        vip       open                        sent, read, tapped Reserve
    E      city="" district=الملز        -         never wrote / never sent    pending (never sent)
    F      city=Riyadh                   -         closed (30h ago) / 1h ago   tapped Later (read: status only)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest
import sqlalchemy as sa

from tests.conftest import make_runtime, stack_env
from worker.audit import AuditEvent
from worker.contacts import rules as segment_rules
from worker.contacts import segments
from worker.errors import MessageInvalid
from worker.models import Campaign, Contact, ContactTag, Message, Segment, utcnow
from worker.status import CampaignStatus

NOW = utcnow()
BUTTONS = [{"id": "reserve", "title": "Reserve"}, {"id": "later", "title": "Later"}]
PHONES = {name: f"9665000000{i:02d}" for i, name in enumerate("ABCDEF")}
EVERYONE_BUT_OPTED_OUT = {"A", "B", "C", "E", "F"}


@pytest.fixture()
def rt(empty_database):  # noqa: ANN001, ANN201
    runtime = make_runtime(stack_env(database_url=empty_database, sandbox_url="http://127.0.0.1:9"))
    yield runtime
    runtime.close()


@dataclass
class World:
    campaign: int
    other_campaign: int


def _contact(name: str, attributes: dict, *, inbound_ago: timedelta | None = None, sent_ago: timedelta | None = None,
             opted_out: bool = False) -> Contact:
    return Contact(phone=PHONES[name], attributes=attributes, first_seen_at=NOW, updated_at=NOW,
                   last_inbound_at=NOW - inbound_ago if inbound_ago else None,
                   last_sent_at=NOW - sent_ago if sent_ago else None, opted_out_at=NOW if opted_out else None)


def _message(campaign_id: int, name: str, **values) -> Message:  # noqa: ANN003
    return Message(campaign_id=campaign_id, phone_number_id="1", phone=PHONES[name], content={}, **values)


@pytest.fixture()
def world(rt) -> World:  # noqa: ANN001
    h = timedelta(hours=1)
    with rt.session_factory.begin() as s:
        s.add_all([
            _contact("A", {"city": "Riyadh", "plan": "gold"}, inbound_ago=h, sent_ago=48 * h),
            _contact("B", {"city": "Jeddah"}, inbound_ago=72 * h, sent_ago=240 * h),
            _contact("C", {}),
            _contact("D", {"city": "Riyadh"}, inbound_ago=h, opted_out=True),
            _contact("E", {"city": "", "district": "الملز"}),
            _contact("F", {"city": "Riyadh"}, inbound_ago=30 * h, sent_ago=h),
        ])
        s.flush()
        s.add_all([ContactTag(phone=PHONES[p], tag=t) for p, t in (("A", "vip"), ("C", "vip"), ("C", "new"), ("D", "vip"))])
        spring = Campaign(name="Spring sale", phone_number_id="1", template={"body_text": "Hi", "buttons": BUTTONS})
        other = Campaign(name="Other", phone_number_id="1", template={"body_text": "Hi", "buttons": [{"id": "go", "title": "Go"}]})
        s.add_all([spring, other])
        s.flush()
        s.add_all([
            _message(spring.id, "A", status="sent", sent_at=NOW, delivered_at=NOW, read_at=NOW, replied_at=NOW,
                     reply_button_id="reserve"),
            _message(spring.id, "B", status="sent", sent_at=NOW, delivered_at=NOW, delivery_status="delivered"),
            _message(spring.id, "C", status="sent", sent_at=NOW),
            _message(spring.id, "D", status="sent", sent_at=NOW, read_at=NOW, replied_at=NOW, reply_button_id="reserve"),
            _message(spring.id, "E", status="pending"),
            _message(spring.id, "F", status="sent", sent_at=NOW, delivery_status="read", replied_at=NOW,
                     reply_button_id="later"),
            _message(other.id, "B", status="sent", sent_at=NOW, replied_at=NOW, reply_button_id="go"),
        ])
        return World(campaign=spring.id, other_campaign=other.id)


def members(rt, rules) -> set[str]:  # noqa: ANN001
    names = {v: k for k, v in PHONES.items()}
    with rt.read_sessions() as s:
        found = [phone for phone, _ in s.execute(segments.members(s, rules, now=NOW))]
        assert segments.count(s, rules, now=NOW) == len(found)
    assert found == sorted(found)   # phone order
    return {names[p] for p in found}


def save(rt, name: str, rules) -> int:  # noqa: ANN001
    return segments.create_segment(rt, name=name, rules=rules, actor="test").id


def segment_rows(rt) -> list[tuple]:  # noqa: ANN001
    with rt.read_sessions() as s:
        return s.execute(sa.select(Segment.id, Segment.name, Segment.rules).order_by(Segment.id)).all()


# --- each leaf -----------------------------------------------------------------------------------

LEAVES = [
    ({"attribute": "city", "equals": "Riyadh"}, {"A", "F"}),
    ({"attribute": "city", "in": ["Jeddah", "Riyadh"]}, {"A", "B", "F"}),
    ({"attribute": "city", "exists": True}, {"A", "B", "F"}),            # E's city is empty: not set
    ({"attribute": "city", "exists": False}, {"C", "E"}),
    ({"attribute": "district", "equals": " الملز"}, {"E"}),                # any script; values are trimmed
    ({"attribute": "plan", "equals": 7}, set()),                          # a number is its text
    ({"tag": "vip"}, {"A", "C"}),
    ({"tag": "new"}, {"C"}),
    ({"tag": " VIP "}, {"A", "C"}),                                       # a tag as stored: trimmed, lower-cased
    ({"received": {"campaign": "SPRING"}}, {"A", "B", "C", "F"}),         # E's message was never sent
    ({"delivered": {"campaign": "SPRING"}}, {"A", "B", "F"}),             # F: a read status implies delivery
    ({"read": {"campaign": "SPRING"}}, {"A", "F"}),
    ({"tapped": {"campaign": "SPRING", "button": "reserve"}}, {"A"}),
    ({"tapped": {"campaign": "SPRING", "button": "later"}}, {"F"}),
    ({"tapped": {"campaign": "SPRING"}}, {"A", "F"}),
    ({"tapped": {"campaign": "OTHER"}}, {"B"}),
    ({"window": "open"}, {"A"}),
    ({"window": "closed"}, {"B", "C", "E", "F"}),
    ({"last_inbound_within": "2d"}, {"A", "F"}),
    ({"last_inbound_within": "4d"}, {"A", "B", "F"}),
    ({"last_sent_within": "3d"}, {"A", "F"}),
    ({"last_sent_within": "2h"}, {"F"}),
]


def _with_ids(rules, world: World):  # noqa: ANN001, ANN202
    """The table's rules with the world's campaign ids in place of SPRING / OTHER."""
    if isinstance(rules, dict):
        return {k: _with_ids(v, world) for k, v in rules.items()}
    if isinstance(rules, list):
        return [_with_ids(v, world) for v in rules]
    return {"SPRING": world.campaign, "OTHER": world.other_campaign}.get(rules, rules) if isinstance(rules, str) else rules


@pytest.mark.parametrize("rules, expected", LEAVES, ids=[str(r) for r, _ in LEAVES])
def test_each_leaf_selects_its_members_and_never_the_opted_out(rt, world, rules, expected) -> None:  # noqa: ANN001
    assert members(rt, _with_ids(rules, world)) == expected


# --- combinators ---------------------------------------------------------------------------------

COMBINED = [
    ({"all": [{"attribute": "city", "equals": "Riyadh"}, {"tag": "vip"}]}, {"A"}),
    ({"any": [{"tag": "new"}, {"attribute": "city", "equals": "Jeddah"}]}, {"B", "C"}),
    # not: a contact without the attribute is "not Riyadh" (no NULL logic leaks through)
    ({"not": {"attribute": "city", "equals": "Riyadh"}}, {"B", "C", "E"}),
    ({"not": {"window": "open"}}, {"B", "C", "E", "F"}),
    ({"not": {"last_sent_within": "3d"}}, {"B", "C", "E"}),
    ({"not": {"tag": "vip"}}, {"B", "E", "F"}),
    ({"all": [{"received": {"campaign": "SPRING"}}, {"not": {"tapped": {"campaign": "SPRING"}}}]}, {"B", "C"}),
    ({"all": [{"received": {"campaign": "SPRING"}}, {"not": {"read": {"campaign": "SPRING"}}}]}, {"B", "C"}),
    ({"any": [{"all": [{"tag": "vip"}, {"not": {"window": "open"}}]},
              {"all": [{"attribute": "city", "in": ["Riyadh"]}, {"tapped": {"campaign": "SPRING", "button": "later"}}]}]},
     {"C", "F"}),
    ({"not": {"any": [{"tag": "vip"}, {"not": {"attribute": "city", "exists": True}}]}}, {"B", "F"}),
    ({"not": {"not": {"tag": "vip"}}}, {"A", "C"}),
]


@pytest.mark.parametrize("rules, expected", COMBINED, ids=[str(r) for r, _ in COMBINED])
def test_all_any_and_not_combine_leaves_at_any_depth(rt, world, rules, expected) -> None:  # noqa: ANN001
    assert members(rt, _with_ids(rules, world)) == expected


def test_an_opted_out_contact_is_never_a_member_even_of_a_rule_that_names_them(rt, world) -> None:  # noqa: ANN001
    everyone = {"any": [{"tag": "vip"}, {"not": {"tag": "vip"}}]}
    assert members(rt, everyone) == EVERYONE_BUT_OPTED_OUT
    assert "D" not in members(rt, {"tapped": {"campaign": world.campaign, "button": "reserve"}})
    with rt.read_sessions() as s:
        assert PHONES["D"] not in {p for p, _ in segments.sample(s, everyone, n=100)}
        assert PHONES["D"] not in {p for p, _, _ in segments.export_rows(s, everyone)}


def test_text_from_a_person_is_a_bound_parameter_never_sql(rt, world) -> None:  # noqa: ANN001
    sneaky = "x' OR '1'='1"
    rules = {"any": [{"attribute": "city", "equals": sneaky}, {"attribute": "city", "in": [sneaky]}, {"tag": sneaky}]}
    assert members(rt, rules) == set()
    with rt.read_sessions() as s:
        compiled = str(segments.condition(s, rules, now=NOW).compile(s.get_bind()))
    assert "OR '1'" not in compiled and "x'" not in compiled


# --- saved segments, {"segment": N} --------------------------------------------------------------

def test_a_segment_rule_uses_the_other_segments_rules_as_they_are_now(rt, world) -> None:  # noqa: ANN001
    vip = save(rt, "VIPs", {"tag": "vip"})
    riyadh_vip = save(rt, "Riyadh VIPs", {"all": [{"segment": vip}, {"attribute": "city", "equals": "Riyadh"}]})
    assert members(rt, {"segment": riyadh_vip}) == {"A"}
    assert members(rt, {"not": {"segment": vip}}) == {"B", "E", "F"}
    segments.update_segment(rt, vip, rules={"attribute": "plan", "exists": False}, actor="test")
    assert members(rt, {"segment": riyadh_vip}) == {"F"}       # the change shows at once: rules, never a list
    with rt.read_sessions() as s:
        shown = segments.view(s, riyadh_vip)
    assert shown.count == 1 and shown.description == "is in segment %d (VIPs) and city is Riyadh" % vip


def test_a_segment_cannot_contain_itself_directly_or_through_others(rt, world) -> None:  # noqa: ANN001
    a = save(rt, "A", {"tag": "vip"})
    b = save(rt, "B", {"any": [{"segment": a}, {"tag": "new"}]})
    c = save(rt, "C", {"not": {"segment": b}})
    before = segment_rows(rt)
    with pytest.raises(segments.RulesInvalid) as direct:
        segments.update_segment(rt, a, rules={"all": [{"tag": "vip"}, {"segment": a}]}, actor="test")
    assert [p.field for p in direct.value.problems] == ["rules.all[1].segment"]
    with pytest.raises(segments.RulesInvalid) as circle:
        segments.update_segment(rt, a, rules={"any": [{"tag": "vip"}, {"segment": c}]}, actor="test")
    assert [p.field for p in circle.value.problems] == ["rules.any[1].segment"]
    assert f"{c} -> {b} -> {a}" in circle.value.problems[0].problem
    assert segment_rows(rt) == before


def test_deleting_a_segment_another_uses_is_refused_and_changes_nothing(rt, world) -> None:  # noqa: ANN001
    vip = save(rt, "VIPs", {"tag": "vip"})
    user = save(rt, "Users of VIPs", {"not": {"segment": vip}})
    with pytest.raises(MessageInvalid) as refused:
        segments.delete_segment(rt, vip, actor="test")
    assert refused.value.problems[0].field == "segment"
    assert f"used by segment {user} (Users of VIPs)" in refused.value.problems[0].problem
    assert [r.id for r in segment_rows(rt)] == [vip, user]
    segments.delete_segment(rt, user, actor="test")
    segments.delete_segment(rt, vip, actor="test")
    assert segment_rows(rt) == []
    with pytest.raises(segments.SegmentNotFound):
        segments.delete_segment(rt, vip, actor="test")


def test_deleting_a_segment_pauses_the_live_series_that_target_it_with_the_reason(rt, world) -> None:  # noqa: ANN001
    vip = save(rt, "VIPs", {"tag": "vip"})
    with rt.session_factory.begin() as s:
        template = {"body_text": "Hi", "buttons": BUTTONS}
        live = Campaign(name="weekly", phone_number_id="1", template=template, segment_id=vip, series_every_s=604800,
                        status=CampaignStatus.SCHEDULED.value)
        stopped = Campaign(name="stopped", phone_number_id="1", template=template, segment_id=vip,
                           series_every_s=86400, status=CampaignStatus.CANCELLED.value)
        once = Campaign(name="once", phone_number_id="1", template=template, segment_id=vip,
                        status=CampaignStatus.DRAFT.value)
        s.add_all([live, stopped, once])
        s.flush()
        ids = live.id, stopped.id, once.id
    assert segments.delete_segment(rt, vip, actor="apikey:x") == [ids[0]]
    with rt.read_sessions() as s:
        rows = {c.id: c for c in s.scalars(sa.select(Campaign).where(Campaign.id.in_(ids)))}
        audit = s.execute(sa.select(AuditEvent.action, AuditEvent.actor, AuditEvent.detail)
                          .where(AuditEvent.subject_type == "segment", AuditEvent.subject_id == vip)
                          .order_by(AuditEvent.id)).all()
    assert rows[ids[0]].status == "paused" and rows[ids[0]].pause_reason == f"segment {vip} (VIPs) was deleted"
    assert rows[ids[1]].status == "cancelled" and rows[ids[2]].status == "draft"
    assert [(a.action, a.actor) for a in audit] == [("segment.created", "test"), ("segment.deleted", "apikey:x")]
    assert audit[-1].detail == {"name": "VIPs", "paused": [ids[0]]}


# --- bad input: the field named, nothing created --------------------------------------------------

BAD = [
    ({}, "rules"),
    ([{"tag": "vip"}], "rules"),
    ({"all": []}, "rules.all"),
    ({"any": {"tag": "vip"}}, "rules.any"),
    ({"all": [{"tag": "vip"}, {"colour": "red"}]}, "rules.all[1].colour"),
    ({"tag": "vip", "window": "open"}, "rules"),
    ({"not": [{"tag": "vip"}]}, "rules.not"),
    ({"all": [{"tag": "vip"}, {"attribute": 3, "equals": "x"}]}, "rules.all[1].attribute"),
    ({"attribute": "city"}, "rules"),
    ({"attribute": "city", "equals": "a", "in": ["a"]}, "rules"),
    ({"attribute": "city", "equals": ["Riyadh"]}, "rules.equals"),
    ({"attribute": "city", "in": []}, "rules.in"),
    ({"attribute": "city", "in": ["a", None]}, "rules.in[1]"),
    ({"attribute": "city", "exists": "yes"}, "rules.exists"),
    ({"attribute": "city", "equals": "a", "colour": 1}, "rules.colour"),
    ({"tag": ""}, "rules.tag"),
    ({"tag": "a;b"}, "rules.tag"),
    ({"attribute": "first name", "equals": "Lina"}, "rules.attribute"),
    ({"attribute": "phone", "exists": True}, "rules.attribute"),
    ({"tag": "x" * 65}, "rules.tag"),
    ({"received": 12}, "rules.received"),
    ({"read": {"campaign": "12"}}, "rules.read.campaign"),
    ({"delivered": {"campaign": True}}, "rules.delivered.campaign"),
    ({"received": {"campaign": 999999}}, "rules.received.campaign"),
    ({"received": {"campaign": "SPRING", "button": "reserve"}}, "rules.received.button"),
    ({"any": [{"tag": "a"}, {"tapped": {"campaign": "SPRING", "button": "nope"}}]}, "rules.any[1].tapped.button"),
    ({"any": [{"tapped": {"campaign": "SPRING", "button": "go"}}]}, "rules.any[0].tapped.button"),  # another campaign's
    ({"window": "ajar"}, "rules.window"),
    ({"last_inbound_within": "0d"}, "rules.last_inbound_within"),
    ({"last_sent_within": "7x"}, "rules.last_sent_within"),
    ({"last_sent_within": 7}, "rules.last_sent_within"),
    ({"segment": 424242}, "rules.segment"),
    ({"segment": "vip"}, "rules.segment"),
    ({"all": [{"not": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {"tag": "a"}}}}}}}}}}]}, "rules.all[0]" + ".not" * 9),
]


@pytest.mark.parametrize("rules, field", BAD, ids=[f"{f}:{str(r)[:40]}" for r, f in BAD])
def test_bad_rules_are_refused_with_the_field_named_and_nothing_is_created(rt, world, rules, field) -> None:  # noqa: ANN001
    with pytest.raises(segments.RulesInvalid) as refused:
        save(rt, "bad", _with_ids(rules, world))
    assert field in [p.field for p in refused.value.problems], refused.value.problems
    assert segment_rows(rt) == []
    with rt.read_sessions() as s, pytest.raises(segments.RulesInvalid):
        segments.count(s, _with_ids(rules, world))


def test_too_many_rules_are_refused(rt, world) -> None:  # noqa: ANN001
    with pytest.raises(segments.RulesInvalid) as refused:
        save(rt, "wide", {"any": [{"tag": f"t{i}"} for i in range(segment_rules.MAX_LEAVES + 1)]})
    assert [p.field for p in refused.value.problems] == ["rules"] and "limit is 200" in str(refused.value)


def test_a_name_is_required_unique_and_at_most_200_characters(rt, world) -> None:  # noqa: ANN001
    save(rt, "VIPs", {"tag": "vip"})
    for name in ("", "   ", None, "x" * 201, " VIPs "):
        with pytest.raises(segments.RulesInvalid) as refused:
            save(rt, name, {"tag": "vip"})
        assert [p.field for p in refused.value.problems] == ["name"]
    with pytest.raises(segments.RulesInvalid) as both:
        save(rt, "", {"tag": ""})
    assert {p.field for p in both.value.problems} == {"name", "rules.tag"}
    assert len(segment_rows(rt)) == 1


def test_validate_returns_the_normalised_document(rt, world) -> None:  # noqa: ANN001
    with rt.read_sessions() as s:
        doc = segments.validate(s, {"all": [{"attribute": " city ", "in": ["a", " a", 5]}, {"tag": " VIP "},
                                            {"last_sent_within": " 168H"}, {"tapped": {"campaign": world.campaign}}]})
    assert doc == {"all": [{"attribute": "city", "in": ["a", "5"]}, {"tag": "vip"}, {"last_sent_within": "168h"},
                           {"tapped": {"campaign": world.campaign}}]}


# --- words ---------------------------------------------------------------------------------------

def test_describe_says_the_rules_in_words(rt, world) -> None:  # noqa: ANN001
    c = world.campaign
    vip = save(rt, "VIPs", {"tag": "vip"})
    cases = [
        ({"all": [{"attribute": "city", "equals": "Riyadh"}, {"tag": "vip"}, {"tapped": {"campaign": c, "button": "reserve"}}]},
         f'city is Riyadh and has tag vip and tapped "Reserve" in campaign {c} (Spring sale)'),
        ({"any": [{"attribute": "city", "in": ["Riyadh", "Jeddah"]}, {"not": {"attribute": "plan", "exists": True}}]},
         "city is one of Riyadh, Jeddah or not (plan is set)"),
        ({"all": [{"received": {"campaign": c}}, {"any": [{"delivered": {"campaign": c}}, {"read": {"campaign": c}}]}]},
         f"received campaign {c} (Spring sale) and (had campaign {c} (Spring sale) delivered or read campaign {c} (Spring sale))"),
        ({"all": [{"window": "open"}, {"last_inbound_within": "7d"}, {"last_sent_within": "1w"}, {"segment": vip}]},
         f"has an open 24-hour window and wrote to us within 7d and was sent a message within 1w and is in segment {vip} (VIPs)"),
        ({"tapped": {"campaign": c}}, f"tapped any button in campaign {c} (Spring sale)"),
        ({"window": "closed"}, "has no open 24-hour window"),
        ({"tapped": {"campaign": 999999, "button": "x"}}, 'tapped "x" in campaign 999999 (deleted)'),
    ]
    with rt.read_sessions() as s:
        assert [segments.describe(s, rules) for rules, _ in cases] == [words for _, words in cases]


# --- reads for the faces -------------------------------------------------------------------------

def test_sample_export_and_attribute_names_read_the_members(rt, world) -> None:  # noqa: ANN001
    everyone = {"not": {"tag": "nobody"}}
    with rt.read_sessions() as s:
        assert [p for p, _ in segments.sample(s, everyone, n=2)] == [PHONES["A"], PHONES["B"]]
        assert segments.attribute_names(s, everyone) == ["city", "district", "plan"]
        assert segments.attribute_names(s, {"tag": "new"}) == []
        rows = list(segments.export_rows(s, everyone, batch=2))   # three batches
    assert [r[0] for r in rows] == [PHONES[n] for n in sorted(EVERYONE_BUT_OPTED_OUT)]
    assert rows[0] == (PHONES["A"], {"city": "Riyadh", "plan": "gold"}, ["vip"])
    assert rows[2] == (PHONES["C"], {}, ["new", "vip"])


def test_a_saved_segment_whose_campaign_was_deleted_is_shown_with_the_problem(rt, world) -> None:  # noqa: ANN001
    gone = save(rt, "Tappers", {"tapped": {"campaign": world.other_campaign}})
    with rt.session_factory.begin() as s:
        s.execute(sa.delete(Campaign).where(Campaign.id == world.other_campaign))
    with rt.read_sessions() as s:
        shown = segments.view(s, gone)
        listed = [segments.view(s, x, counted=False).name for x in segments.list_segments(s)]
    assert shown.count is None and f"no campaign {world.other_campaign}" in shown.problem
    assert shown.description == f"tapped any button in campaign {world.other_campaign} (deleted)"
    assert listed == ["Tappers"]
