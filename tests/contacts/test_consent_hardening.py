"""Issue 25 item 4 (consent): consent follows the newest event's own time whatever order the events
are processed in, and opt-out / opt-in keywords match normalised text (NFKC, case, punctuation,
invisible characters, Arabic letter forms) as the whole message or its first word. Each test that
touches the database runs on SQLite and on Postgres."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from tests.conftest import make_runtime, stack_env
from worker.contacts import service as contacts
from worker.contacts.keywords import match_keyword, normalise
from worker.models import ContactEvent, utcnow
from worker.settings import Settings
from worker.webhooks.apply import record_and_apply
from worker.webhooks.events import parse_body

_seq = iter(range(5_000_000, 5_999_999))
RULES = contacts.ConsentRules.from_settings(Settings())


def new_phone() -> str:
    return f"96650{next(_seq):07d}"


@pytest.fixture()
def runtime(database_url, sandbox):  # noqa: ANN001
    base_url, _ = sandbox
    rt = make_runtime(stack_env(database_url=database_url, sandbox_url=base_url))
    yield rt
    rt.close()


def inbound(rt, phone: str, text: str, *, at: datetime) -> None:  # noqa: ANN001
    """What the receiver does with one message.received body sent at `at` (record and apply, one transaction)."""
    data = {"message_id": f"in.{new_phone()}", "from": phone, "type": "text", "body": text, "timestamp": at.isoformat()}
    body = json.dumps({"event": "message.received", "data": data}).encode()
    with rt.session_factory.begin() as s:
        record_and_apply(s, parse_body(body, received_at=utcnow()), body,
                         contacts.ConsentRules.from_settings(rt.settings))


def state(rt, phone: str) -> tuple[bool, list[tuple[str, datetime]]]:  # noqa: ANN001
    with rt.session_factory() as s:
        view = contacts.get_contact(s, phone)
    return view.opted_out, [(h.action, h.at) for h in view.history]


# Each scenario: what the person sent, in the order the receiver processed it (minutes after t0).
SCENARIOS = {
    # the reproduction: opted out earlier; START then STOP sent, the STOP processed first
    "stop_processed_before_an_earlier_start": ([("STOP", 0), ("STOP", 10), ("START", 5)], True),
    # the mirror: STOP then START sent, the START processed first, on a contact never opted out
    "start_processed_before_an_earlier_stop": ([("START", 10), ("STOP", 5)], False),
    # out again, in again, out again, processed newest first
    "three_changes_processed_newest_first": ([("STOP", 20), ("START", 10), ("STOP", 0)], True),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_item4_stop_before_an_earlier_start_keeps_the_contact_opted_out(runtime, scenario: str) -> None:
    """Issue 25 item 4: a consent change older than the contact's newest one does not override it;
    the contact's state is the newest event's, and its time is that event's time."""
    steps, expect_out = SCENARIOS[scenario]
    phone, t0 = new_phone(), utcnow() - timedelta(hours=1)
    for text, minutes in steps:
        inbound(runtime, phone, text, at=t0 + timedelta(minutes=minutes))

    with runtime.session_factory() as s:
        view = contacts.get_contact(s, phone)
    assert view.opted_out is expect_out
    newest = t0 + timedelta(minutes=max(minutes for _, minutes in steps))
    assert (view.opted_out_at if expect_out else view.opted_in_at) == newest


def test_item4_a_late_change_is_history_and_a_repeat_is_not(runtime) -> None:
    """Issue 25 item 4: the out-of-order START is recorded (with why it changed nothing); a repeated
    STOP is not a change of consent and adds no row (issue 13 item 1)."""
    phone, t0 = new_phone(), utcnow() - timedelta(hours=1)
    with runtime.session_factory.begin() as s:
        assert contacts.opt_out(s, phone, source="keyword", at=t0)
        assert not contacts.opt_out(s, phone, source="keyword", at=t0 + timedelta(minutes=10))   # a repeat
        assert not contacts.opt_in(s, phone, source="keyword", at=t0 + timedelta(minutes=5))     # late
    with runtime.session_factory() as s:
        events = s.execute(sa.select(ContactEvent.action, ContactEvent.at, ContactEvent.reason)
                           .where(ContactEvent.phone == phone).order_by(ContactEvent.at)).all()
    assert [(a, at) for a, at, _ in events] == [("opt_out", t0), ("opt_in", t0 + timedelta(minutes=5))]
    assert "no change" in events[1].reason
    assert state(runtime, phone)[0] is True


def test_item4_a_stop_and_a_start_in_the_same_second_end_opted_out_in_either_order(runtime) -> None:
    """Issue 25 item 4: the vendor's timestamps are whole seconds; on a tie the request to stop wins."""
    at = utcnow().replace(microsecond=0) - timedelta(minutes=1)
    first, second = new_phone(), new_phone()
    for phone, order in ((first, ("STOP", "START")), (second, ("START", "STOP"))):
        for text in order:
            inbound(runtime, phone, text, at=at)
    assert state(runtime, first)[0] is True and state(runtime, second)[0] is True


KEYWORDS = [
    # English: the whole message or its first word, whatever the case, punctuation and invisible characters
    ("STOP", "opt_out"), ("Stop.", "opt_out"), ("STOP!", "opt_out"), ("stop all", "opt_out"),
    ("stop-all", "opt_out"), ("  sToP  ", "opt_out"), ("ＳＴＯＰ", "opt_out"), ("STOP\u200b", "opt_out"),
    ("\u200bSTOP", "opt_out"), ("S\u200cT\u200dOP", "opt_out"), ("\ufeffstop", "opt_out"), ("stop\u2060", "opt_out"),
    ("\u200estop\u200f", "opt_out"), ("Stop, please!", "opt_out"), ("UNSUBSCRIBE!!!", "opt_out"),
    ("🛑 STOP", "opt_out"), ("stop\nthanks", "opt_out"), ("STOPALL", "opt_out"), ("start!", "opt_in"),
    ("Unstop.", "opt_in"), ("ＳＴＡＲＴ", "opt_in"),
    # English that is not a request: a keyword elsewhere than first, a longer word, nothing at all
    ("please stop", None), ("please don't stop sending", None), ("stopping", None), ("non-stop", None),
    ("unsubscribed", None), ("", None), ("...", None), ("\u200b", None), (None, None),
    # Arabic: punctuation, tatweel, tashkeel, alef forms, the Arabic letter mark, presentation forms
    ("إيقاف", "opt_out"), ("ايقاف.", "opt_out"), ("ايقاف!", "opt_out"), ("ايـــقاف", "opt_out"),
    ("إِيقَاف", "opt_out"), ("أيقاف", "opt_out"), ("\u061cايقاف", "opt_out"), ("ﺍﻳﻘﺎﻑ", "opt_out"),
    ("الغاء؟", "opt_out"), ("إلغاء الاشتراك", "opt_out"), ("توقف،", "opt_out"), ("ايقاف\u200b", "opt_out"),
    ("ابدأ", "opt_in"), ("ابدا", "opt_in"), ("اشتراك!", "opt_in"),
    ("من فضلك ايقاف", None), ("ايقافات", None),
]


@pytest.mark.parametrize(("text", "expected"), KEYWORDS)
def test_item4_keywords_match_normalised_english_and_arabic(text: str | None, expected: str | None) -> None:
    """Issue 25 item 4: the default OPT_OUT_KEYWORDS / OPT_IN_KEYWORDS match normalised text as the
    whole message or its first word (Twilio's Advanced Opt-Out); "please stop" is not a match."""
    assert RULES.for_text(text) == expected


def test_item4_the_rule_is_one_function_and_normalises_the_keywords_too() -> None:
    """Issue 25 item 4: match_keyword normalises both sides, so a configured "Stop All" or "إلغاء" matches
    what a phone sends; a multi-word keyword matches the whole message only."""
    assert match_keyword("stop all!", frozenset({"stop all"})) == "stop all"
    assert match_keyword("STOP ALL NOW", frozenset({"stop all"})) is None
    assert match_keyword("الغاء", frozenset({"إلغاء"})) == normalise("إلغاء") == "الغاء"
    assert match_keyword("Basta!", frozenset({"halt", "basta"})) == "basta"
    assert match_keyword("hello", frozenset()) is None


@pytest.mark.parametrize("text", ["Stop.", "ايـقاف."])
def test_item4_a_normalised_keyword_through_the_receiver_opts_out(runtime, text: str) -> None:
    """Issue 25 item 4: the receiver's path (record_and_apply) uses the same rule, English and Arabic."""
    phone = new_phone()
    inbound(runtime, phone, text, at=utcnow())
    with runtime.session_factory() as s:
        view = contacts.get_contact(s, phone)
    assert view.opted_out and view.opt_out_source == "keyword"
