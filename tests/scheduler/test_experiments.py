"""A/B tests (scheduler.experiments, scheduler.significance): the options, an even and stable
assignment on SQLite and Postgres, the clock (and its pause), the decision on fixed counts, the
winner's release to the held recipients."""

from __future__ import annotations

import csv
import math
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from scheduler import audience, campaigns, experiments, significance
from scheduler.dispatcher import dispatch_tick
from tests.conftest import make_runtime, stack_env
from tests.scheduler.test_audience import add_contacts, messages_of, segment
from worker.errors import MessageInvalid
from worker.models import Experiment, Message, utcnow
from worker.status import MessageStatus

BUTTONS = [{"id": "reserve", "title": "Reserve"}, {"id": "later", "title": "Later"}]
A = {"body_text": "Hello {{name}}, spring sale", "buttons": BUTTONS}
B = {"body_text": "{{name}}, 20% off this weekend only", "buttons": BUTTONS}
C = {"body_text": "Last chance, {{name}}", "buttons": [{"id": "reserve", "title": "Book now"}]}


@pytest.fixture
def rt(empty_database: str) -> Any:
    runtime = make_runtime(stack_env(database_url=empty_database, sandbox_url="http://127.0.0.1:9",
                                     AWAL_PHONE_NUMBER_ID="123456", OPT_OUT_BUTTON_IDS="stop"))
    yield runtime
    runtime.close()


def write_csv(path: Path, n: int, start: int = 0) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["phone", "name"])
        for i in range(start, start + n):
            writer.writerow([f"+9665{i:08d}", f"n{i}"])
    return path


def create(rt: Any, path: Path, **options: Any) -> int:
    campaign, _ = campaigns.create_from_options(rt, path, name="ab", template=None,
                                                variants=options.pop("variants", [A, B]), **options)
    return campaign.id


# --- the options -------------------------------------------------------------------------------

@pytest.mark.parametrize("options, field, words", [
    (dict(variants=[A]), "variants", "1 message(s); an A/B test takes 2 or 3"),
    (dict(variants=[A, B, C, A]), "variants", "4 message(s)"),
    (dict(test_share=0), "test_share", "outside (0, 1]"),
    (dict(test_share=1.5), "test_share", "outside (0, 1]"),
    (dict(test_share="lots"), "test_share", "not a number"),
    (dict(test_share=0.2), "decide_after", "is required with a test share below 1"),
    (dict(test_share=1, decide_after="4h"), "decide_after", "no use with test_share 1"),
    (dict(test_share=0.2, decide_after="0d"), "decide_after", "too short"),
    (dict(test_share=0.2, decide_after="7x"), "decide_after", "not a duration"),
    (dict(metric="clicks"), "metric", "use one of taps, replies, reads"),
    (dict(default_variant="C"), "default_variant", "not one of the variants (A, B)"),
    (dict(variants=[A, {"body_text": "", "buttons": BUTTONS}], variant_labels=["a.json", "b.json"]),
     "b.json: body_text", ""),
])
def test_bad_options_are_refused_with_the_field_named_and_nothing_created(rt: Any, tmp_path: Path, options: dict,
                                                                        field: str, words: str) -> None:
    path = write_csv(tmp_path / "r.csv", 5)
    with pytest.raises(MessageInvalid) as caught:
        create(rt, path, **options)
    problems = {p.field: p.problem for p in caught.value.problems}
    assert field in problems, problems
    assert words in problems[field]
    with rt.session_factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Experiment)) == 0
        assert session.scalar(sa.select(sa.func.count()).select_from(Message)) == 0


def test_message_and_variants_together_or_test_options_alone_are_refused(rt: Any, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", 5)
    with pytest.raises(MessageInvalid, match="variants: give the message or its variants, not both"):
        campaigns.create_from_options(rt, path, name="x", template=A, variants=[A, B])
    with pytest.raises(MessageInvalid, match="test_share: .*belong.* to an A/B test"):
        campaigns.create_from_options(rt, path, name="x", template=A, test_share=0.5)


# --- assignment ----------------------------------------------------------------------------------

def test_postgres_computes_the_same_bucket_as_python(clean_postgres: str) -> None:
    engine = sa.create_engine(clean_postgres)
    phones = [f"9665{i:08d}" for i in range(0, 5000, 7)]
    with engine.connect() as conn:
        got = conn.execute(sa.text(
            "SELECT p, ('x' || substr(md5('42:' || p), 1, 8))::bit(32)::bigint FROM unnest(CAST(:ps AS text[])) AS p"),
            {"ps": phones}).all()
    engine.dispose()
    assert {p: b for p, b in got} == {p: experiments.bucket(42, p) for p in phones}


def test_assignment_is_even_and_the_rest_is_held_with_every_variant(rt: Any, tmp_path: Path) -> None:
    """3,000 recipients, test share 0.3, 3 variants: about 900 in the test group, 300 each. The
    bounds are 4.5 standard deviations of the binomial (p = 0.3 of 3,000: sd 25.1; each variant,
    p = 0.1: sd 16.4), so an honest split fails this once in ~150,000 runs."""
    n = 3000
    campaign_id = create(rt, write_csv(tmp_path / "r.csv", n), variants=[A, B, C], test_share=0.3, decide_after="1h")
    rows = messages_of(rt, campaign_id)
    assert len(rows) == n
    test = [m for m in rows.values() if m.variant is not None]
    assert abs(len(test) - 0.3 * n) <= 4.5 * math.sqrt(n * 0.3 * 0.7)
    for letter in "ABC":
        got = sum(1 for m in test if m.variant == letter)
        assert abs(got - 0.1 * n) <= 4.5 * math.sqrt(n * 0.1 * 0.9), (letter, got)
    for phone, m in rows.items():
        expected = experiments.variant_of(campaign_id, phone, 0.3, 3)
        assert m.variant == expected
        if expected is None:
            assert m.status == MessageStatus.HELD.value
            assert set(m.alternatives) == {"A", "B", "C"}
            assert m.content == m.alternatives["A"]                 # the default variant's, valid
            assert m.alternatives["B"]["body_text"].endswith("20% off this weekend only")
        else:
            assert m.status == MessageStatus.PENDING.value and m.alternatives is None
            body = {"A": "Hello n{}, spring sale", "B": "n{}, 20% off this weekend only", "C": "Last chance, n{}"}
            assert m.content["body_text"] == body[expected].format(int(phone[-8:]))


def test_a_variant_never_changes_on_retry_or_a_second_import(rt: Any, tmp_path: Path) -> None:
    campaign_id = create(rt, write_csv(tmp_path / "r.csv", 200), test_share=1, draft=True)
    before = {p: m.variant for p, m in messages_of(rt, campaign_id).items()}
    assert set(before.values()) == {"A", "B"}
    with rt.session_factory.begin() as session:   # a retry puts a failed message back: its variant stays
        session.execute(sa.update(Message).where(Message.campaign_id == campaign_id)
                        .values(status=MessageStatus.FAILED.value))
        assert experiments.assign(session, campaign_id) == 0
        session.execute(sa.update(Message).where(Message.campaign_id == campaign_id)
                        .values(status=MessageStatus.PENDING.value))
        assert experiments.assign(session, campaign_id) == 0
    from scheduler.importer import import_recipients   # more recipients into the draft: the first keep theirs
    import_recipients(rt.session_factory, campaign_id, write_csv(tmp_path / "more.csv", 300))
    after = {p: m.variant for p, m in messages_of(rt, campaign_id).items()}
    assert len(after) == 300 and all(after[p] == v for p, v in before.items())
    assert all(v == experiments.variant_of(campaign_id, p, 1.0, 2) for p, v in after.items())


def test_a_segment_campaign_is_assigned_at_resolution(rt: Any) -> None:
    add_contacts(rt, {f"9665{i:08d}": {"name": f"n{i}"} for i in range(100)})
    seg = segment(rt, {"attribute": "name", "exists": True})
    campaign = audience.create_audience_campaign(rt, name="seg ab", template=None, variants=[A, B], segment_id=seg,
                                                 test_share=0.5, decide_after="30m")
    assert audience.resolve(rt.session_factory, campaign.id)
    rows = messages_of(rt, campaign.id)
    assert len(rows) == 100
    for phone, m in rows.items():
        assert m.variant == experiments.variant_of(campaign.id, phone, 0.5, 2)
        assert m.status == (MessageStatus.HELD.value if m.variant is None else MessageStatus.PENDING.value)


# --- the decision on fixed counts -----------------------------------------------------------------

def test_a_clear_winner() -> None:
    """A 50/1000, B 80/1000. Pooled p = 130/2000 = 0.065; se = sqrt(0.065 * 0.935 * (1/1000 + 1/1000))
    = sqrt(0.00012155) = 0.011025; z = (0.080 - 0.050) / 0.011025 = 2.721; one-sided p = P(Z > 2.721)
    = 0.00325 < 0.05: B wins. Wilson 95 % for B: centre (0.08 + 1.9208/1000) / 1.0038415 = 0.081609,
    half 1.96 * sqrt(0.08 * 0.92 / 1000 + 3.8415 / 4e6) / 1.0038415 = 0.016857: [0.0648, 0.0985]."""
    v = significance.decide({"A": (50, 1000), "B": (80, 1000)})
    assert v.outcome == significance.WINNER and v.winner == "B"
    (c,) = v.comparisons
    assert c.z == pytest.approx(2.721, abs=0.001) and c.p_value == pytest.approx(0.00325, abs=0.0001)
    assert v.rates["B"].low == pytest.approx(0.0648, abs=0.0001) and v.rates["B"].high == pytest.approx(0.0985, abs=0.0001)


def test_a_tie_is_no_clear_winner() -> None:
    """A 50/1000, B 55/1000: pooled 0.0525, se = sqrt(0.0525 * 0.9475 * 0.002) = 0.009974,
    z = 0.005 / 0.009974 = 0.501, p = 0.308 >= 0.05: B leads, but chance explains it."""
    v = significance.decide({"A": (50, 1000), "B": (55, 1000)})
    assert v.outcome == significance.NO_CLEAR_WINNER and v.winner is None and v.leader == "B"
    assert v.comparisons[0].p_value == pytest.approx(0.308, abs=0.001)
    assert significance.decide({"A": (40, 500), "B": (40, 500)}).outcome == significance.NO_CLEAR_WINNER


def test_a_sample_too_small_decides_nothing() -> None:
    """A 2/40, B 4/40: pooled 6/80 = 0.075; 40 * 0.075 = 3 < 5 successes: the normal approximation
    does not hold, whatever z says."""
    v = significance.decide({"A": (2, 40), "B": (4, 40)})
    assert v.outcome == significance.TOO_SMALL and v.winner is None


def test_three_variants_the_best_must_beat_each_at_the_bonferroni_threshold() -> None:
    """C 80/1000 vs A 50/1000: p = 0.00325 < 0.025; C vs B 62/1000: pooled 0.071, se = sqrt(0.071 *
    0.929 * 0.002) = 0.011486, z = 0.018 / 0.011486 = 1.567, p = 0.0585 >= 0.025: no clear winner."""
    v = significance.decide({"A": (50, 1000), "B": (62, 1000), "C": (80, 1000)})
    assert v.alpha == pytest.approx(0.025)
    assert v.outcome == significance.NO_CLEAR_WINNER and v.leader == "C"
    assert significance.decide({"A": (50, 1000), "B": (45, 1000), "C": (90, 1000)}).winner == "C"


# --- the clock, the pause, the decision, the release ------------------------------------------------

def _send_test_group(rt: Any, campaign_id: int, taps: dict[str, float]) -> None:
    """Mark the test group sent, and tapped at the given rate per variant (every k-th)."""
    now = utcnow()
    with rt.session_factory.begin() as session:
        for i, m in enumerate(session.scalars(sa.select(Message).where(Message.campaign_id == campaign_id,
                                                                        Message.variant.is_not(None)).order_by(Message.id))):
            m.status, m.sent_at = MessageStatus.SENT.value, now
            if (i % 100) < taps[m.variant] * 100:
                m.reply_button_id, m.replied_at = "reserve", now


def test_the_clock_starts_when_the_test_group_is_sent_stops_while_paused_and_the_winner_goes_to_the_rest(
        rt: Any, tmp_path: Path) -> None:
    campaign_id = create(rt, write_csv(tmp_path / "r.csv", 2000), test_share=0.5, decide_after="1h")
    t0 = utcnow()
    with rt.session_factory.begin() as session:
        session.execute(sa.update(Message).where(Message.campaign_id == campaign_id, Message.variant.is_not(None))
                        .values(status=MessageStatus.SENT.value))   # the dispatcher would send them ...
    with rt.session_factory.begin() as session:
        session.execute(sa.update(Message).where(Message.campaign_id == campaign_id, Message.variant.is_not(None))
                        .values(status=MessageStatus.PENDING.value))   # ... but not yet: start first
    from worker import lifecycle
    with rt.session_factory.begin() as session:
        lifecycle.start_due(session, t0)
    assert experiments.tick(rt, t0) == []
    with rt.session_factory() as session:
        assert session.get(Experiment, campaign_id).phase == experiments.TESTING   # the test group is unsent
    _send_test_group(rt, campaign_id, {"A": 0.05, "B": 0.15})
    experiments.tick(rt, t0)
    with rt.session_factory() as session:
        e = session.get(Experiment, campaign_id)
        assert e.phase == experiments.WAITING and e.decide_at == t0 + timedelta(hours=1)
    campaigns.pause_campaign(rt, campaign_id, actor="test")
    experiments.tick(rt, t0 + timedelta(minutes=10))               # the clock stops at +10 min ...
    campaigns.resume_campaign(rt, campaign_id, actor="test")
    experiments.tick(rt, t0 + timedelta(minutes=40))               # ... and goes on at +40: 30 min later
    with rt.session_factory() as session:
        assert session.get(Experiment, campaign_id).decide_at == t0 + timedelta(hours=1, minutes=30)
    assert experiments.tick(rt, t0 + timedelta(hours=1, minutes=29)) == []
    assert experiments.tick(rt, t0 + timedelta(hours=1, minutes=30)) == [campaign_id]
    rows = messages_of(rt, campaign_id)
    with rt.session_factory() as session:
        e = session.get(Experiment, campaign_id)
        assert (e.phase, e.winner, e.sent_variant, e.decided_by) == (experiments.DECIDED, "B", "B", None)
        assert e.decision["outcome"] == "winner" and e.decision["released"] == sum(
            1 for m in rows.values() if m.alternatives is None and m.status == "pending")
    released = [m for m in rows.values() if m.status == MessageStatus.PENDING.value]
    assert released and all(m.variant == "B" and m.content["body_text"].endswith("20% off this weekend only")
                            for m in released)
    assert not any(m.status == MessageStatus.HELD.value for m in rows.values())
    with pytest.raises(experiments.ExperimentError, match="was decided already"):
        experiments.decide(rt, campaign_id, variant="A", actor="admin")


def test_an_operator_decides_early_and_is_in_the_audit_trail(rt: Any, tmp_path: Path) -> None:
    from worker.audit import AuditEvent
    campaign_id = create(rt, write_csv(tmp_path / "r.csv", 300), test_share=0.2, decide_after="1d",
                         default_variant="B")
    with pytest.raises(MessageInvalid, match="'D' is not one of this campaign's variants"):
        experiments.decide(rt, campaign_id, variant="D", actor="admin")
    e = experiments.decide(rt, campaign_id, variant="a", actor="admin@example.com")
    assert (e.sent_variant, e.decided_by, e.decision["chosen_by"]) == ("A", "admin@example.com", "operator")
    assert all(m.status != MessageStatus.HELD.value for m in messages_of(rt, campaign_id).values())
    with rt.session_factory() as session:
        audit = session.scalars(sa.select(AuditEvent).where(AuditEvent.action == "campaign.decided")).one()
        assert audit.actor == "admin@example.com" and audit.detail["variant"] == "A"


def test_no_clear_winner_sends_the_default_variant(rt: Any, tmp_path: Path) -> None:
    campaign_id = create(rt, write_csv(tmp_path / "r.csv", 400), test_share=0.5, decide_after="1m",
                         default_variant="B")
    e = experiments.decide(rt, campaign_id)   # nothing sent yet: too small a sample
    assert (e.winner, e.sent_variant) == (None, "B")
    assert "the default variant B is sent" in e.decision["reason"]


def test_report_only_and_cancel(rt: Any, tmp_path: Path) -> None:
    report_only = create(rt, write_csv(tmp_path / "r.csv", 50), test_share=1)
    with pytest.raises(experiments.ExperimentError, match="no winner step"):
        experiments.decide(rt, report_only)
    held = create(rt, write_csv(tmp_path / "s.csv", 50, start=100), test_share=0.5, decide_after="1h")
    _, cancelled = campaigns.cancel_campaign(rt, held, actor="test")
    assert cancelled == 50 and all(m.status == "cancelled" for m in messages_of(rt, held).values())


def test_a_campaign_with_held_recipients_is_not_completed(rt: Any, tmp_path: Path) -> None:
    campaign_id = create(rt, write_csv(tmp_path / "r.csv", 100), test_share=0.3, decide_after="1h")
    _send_test_group(rt, campaign_id, {"A": 0, "B": 0})
    for _ in range(2):   # the first tick starts it, the second sees the test group sent
        report = dispatch_tick(rt)
        assert campaign_id not in report.completed
    with rt.session_factory() as session:
        assert session.get(Experiment, campaign_id).phase == experiments.WAITING


def test_a_text_reply_is_not_counted_as_a_button_tap(rt: Any, tmp_path: Path) -> None:
    """worker.webhooks.apply stores a text reply quoting the message with reply_button_id "" (found by the e2e work)."""
    campaign_id = create(rt, write_csv(tmp_path / "r.csv", 20), test_share=1)
    now = utcnow()
    with rt.session_factory.begin() as session:
        m = session.scalars(sa.select(Message).where(Message.campaign_id == campaign_id, Message.variant == "A")).first()
        m.status, m.sent_at, m.replied_at, m.reply_button_id = MessageStatus.SENT.value, now, now, ""
    with rt.session_factory() as session:
        a = experiments.results(session, campaign_id, ["stop"])["variants"][0]
    assert (a.tapped, a.taps, a.replied) == (0, {}, 1)


def test_a_test_that_holds_nobody_is_still_decided_after_its_campaign_completes(rt: Any, tmp_path: Path) -> None:
    """3 recipients at test share 0.99: nobody is held, so the campaign completes as soon as they are
    sent; the test is decided all the same (found by the e2e work: it stayed `waiting` for ever)."""
    from worker import lifecycle
    campaign_id = create(rt, write_csv(tmp_path / "r.csv", 3), test_share=0.99, decide_after="1s")
    t0 = utcnow()
    with rt.session_factory.begin() as session:
        lifecycle.start_due(session, t0)
        session.execute(sa.update(Message).where(Message.campaign_id == campaign_id)
                        .values(status=MessageStatus.SENT.value, sent_at=t0))
        lifecycle.complete_finished(session, t0)
    experiments.tick(rt, t0)
    assert experiments.tick(rt, t0 + timedelta(seconds=1)) == [campaign_id]
    with rt.session_factory() as session:
        e = session.get(Experiment, campaign_id)
        assert e.phase == experiments.DECIDED and e.decision["released"] == 0


def test_a_cancelled_test_says_so(rt: Any, tmp_path: Path) -> None:
    campaign_id = create(rt, write_csv(tmp_path / "r.csv", 30), test_share=0.5, decide_after="1h")
    campaigns.cancel_campaign(rt, campaign_id, actor="test")
    assert experiments.tick(rt, utcnow() + timedelta(days=1)) == []
    with rt.session_factory() as session:
        lines = experiments.describe_lines(experiments.results(session, campaign_id, ["stop"]))
    assert "cancelled before a decision" in lines[-1]
