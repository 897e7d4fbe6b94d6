"""`buttoncast retry`: each filter, --dry-run, unknown needs a decision, sent is never requeued.

Runs on SQLite and Postgres. Messages are written in their end states directly (as the send path
would leave them), then the command is run as an operator would, and the rows are checked.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from scheduler import dispatcher
from scheduler.retry import RetrySelection, _requeue_batch, plan_retry, requeue
from tests.conftest import make_runtime, stack_env
from worker.cli.retry import retry_command
from worker.models import Attempt, Campaign, Message, MessageEvent, utcnow
from worker.status import MessageStatus

BUTTONS = [{"id": "yes", "title": "Yes"}]
CONTENT = {"body_text": "Offer", "buttons": BUTTONS}
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture()
def env(database_url: str) -> dict[str, str]:
    return stack_env(database_url=database_url, sandbox_url="http://127.0.0.1:9", AWAL_RATE_LIMIT="1000/s")


@pytest.fixture()
def rt(env):  # noqa: ANN001
    runtime = make_runtime(env)
    yield runtime
    runtime.close()


def campaign(rt, status: str = "running") -> int:  # noqa: ANN001
    with rt.session_factory.begin() as s:
        c = Campaign(name="spring", phone_number_id="123456", template=CONTENT, status=status,
                     started_at=T0, finished_at=T0 if status == "completed" else None)
        s.add(c)
        s.flush()
        return c.id


_phones = iter(range(100000, 999999))


def message(rt, campaign_id: int | None, status: str, code: str | None = None, *,  # noqa: ANN001
            finished_at: datetime = T0, attempts: int = 3, vendor_message_id: str | None = None) -> int:
    """A message in an end state, with one attempt row per counted attempt (what the send path leaves)."""
    with rt.session_factory.begin() as s:
        m = Message(campaign_id=campaign_id, phone_number_id="123456", phone=f"966{next(_phones)}", content=CONTENT,
                    status=status, attempts=attempts, last_error_code=code, last_error_message=code and f"{code} happened",
                    finished_at=finished_at, queued_at=T0, enqueued_at=T0, claim_token="tok", not_before=T0,
                    vendor_message_id=vendor_message_id, sent_at=finished_at if status == "sent" else None)
        s.add(m)
        s.flush()
        for i in range(attempts):
            s.add(Attempt(message_id=m.id, started_at=T0 + timedelta(seconds=i), duration_ms=5, http_status=503,
                          outcome="ServerError", error_code=code, worker="w1"))
        return m.id


def row(rt, mid: int) -> Message:  # noqa: ANN001
    with rt.session_factory() as s:
        return s.get(Message, mid)


def events(rt, mid: int) -> list[MessageEvent]:  # noqa: ANN001
    with rt.session_factory() as s:
        return list(s.scalars(sa.select(MessageEvent).where(MessageEvent.message_id == mid).order_by(MessageEvent.id)))


def attempt_count(rt, mid: int) -> int:  # noqa: ANN001
    with rt.session_factory() as s:
        return s.scalar(sa.select(sa.func.count()).select_from(Attempt).where(Attempt.message_id == mid))


def run(env: dict[str, str], *args: str):  # noqa: ANN201
    return CliRunner().invoke(retry_command, list(args), env=env, catch_exceptions=False)


def campaign_status(rt, cid: int) -> str:  # noqa: ANN001
    with rt.session_factory() as s:
        return s.scalar(sa.select(Campaign.status).where(Campaign.id == cid))


def test_failed_messages_are_requeued_with_a_fresh_budget_and_the_reason_on_record(rt, env) -> None:
    # Given a running campaign with failed, unknown and sent messages
    cid = campaign(rt)
    failed = [message(rt, cid, "failed", "service_unavailable"), message(rt, cid, "failed", "invalid_phone_number")]
    unknown = message(rt, cid, "unknown", "read_timeout", attempts=1)
    sent = message(rt, cid, "sent", attempts=1, vendor_message_id="wamid.A")

    # When the operator retries the failed ones
    result = run(env, "--campaign", str(cid), "--status", "failed")

    # Then it says how many and why, and only the failed ones are queued for the dispatcher
    assert result.exit_code == 0, result.output
    assert "will requeue 2 message(s) (campaign %d, status failed)" % cid in result.output
    assert "1  last error service_unavailable" in result.output and "1  last error invalid_phone_number" in result.output
    assert "requeued 2 message(s)" in result.output
    for mid in failed:
        msg = row(rt, mid)
        assert (msg.status, msg.enqueued_at, msg.not_before, msg.attempts, msg.finished_at) == ("queued", None, None, 0, None)
        assert attempt_count(rt, mid) == 3  # history kept
        [event] = events(rt, mid)
        assert (event.from_status, event.to_status, event.actor) == ("failed", "queued", "operator")
        assert f"campaign {cid}, status failed" in event.reason and "attempts counter was 3" in event.reason
    assert row(rt, unknown).status == "unknown" and row(rt, sent).status == "sent"


def test_dry_run_prints_the_plan_and_changes_nothing(rt, env) -> None:
    cid = campaign(rt)
    mids = [message(rt, cid, "failed", "service_unavailable") for _ in range(3)]

    result = run(env, "--campaign", str(cid), "--status", "failed", "--dry-run")

    assert result.exit_code == 0, result.output
    assert "would requeue 3 message(s)" in result.output and "3  last error service_unavailable" in result.output
    assert "requeued" not in result.output.replace("would requeue", "")
    assert all(row(rt, m).status == "failed" and not events(rt, m) for m in mids)


def test_error_code_filter_requeues_only_that_code(rt, env) -> None:
    cid = campaign(rt)
    transient = message(rt, cid, "failed", "service_unavailable")
    permanent = message(rt, cid, "failed", "invalid_phone_number")

    result = run(env, "--campaign", str(cid), "--status", "failed", "--error-code", "service_unavailable")

    assert result.exit_code == 0 and "will requeue 1 message(s)" in result.output
    assert "error code service_unavailable" in events(rt, transient)[0].reason
    assert (row(rt, transient).status, row(rt, permanent).status) == ("queued", "failed")


def test_since_filter_requeues_only_messages_that_ended_after_it(rt, env) -> None:
    cid = campaign(rt)
    old = message(rt, cid, "failed", "service_unavailable", finished_at=T0 - timedelta(hours=2))
    new = message(rt, cid, "failed", "service_unavailable", finished_at=T0 + timedelta(minutes=1))

    result = run(env, "--campaign", str(cid), "--status", "failed", "--since", "2026-03-01T15:00:00+03:00")

    assert result.exit_code == 0 and "will requeue 1 message(s)" in result.output
    assert (row(rt, old).status, row(rt, new).status) == ("failed", "queued")
    assert run(env, "--campaign", str(cid), "--status", "failed", "--since", "2026-03-01T12:00:00").exit_code == 2


def test_unknown_needs_an_explicit_yes_and_warns_about_duplicates(rt, env) -> None:
    cid = campaign(rt)
    mid = message(rt, cid, "unknown", "read_timeout", attempts=1)

    refused = run(env, "--campaign", str(cid), "--status", "unknown")  # not a terminal, no --yes
    assert refused.exit_code == 1 and "duplicate" in refused.output and "--yes" in refused.output
    assert row(rt, mid).status == "unknown"

    accepted = run(env, "--campaign", str(cid), "--status", "unknown", "--yes")
    assert accepted.exit_code == 0, accepted.output
    assert "warning: 1 of them are unknown" in accepted.output and "twice" in accepted.output
    assert row(rt, mid).status == "queued"
    assert events(rt, mid)[0].from_status == "unknown"


def test_a_sent_message_is_never_requeued_and_the_command_says_so(rt, env) -> None:
    cid = campaign(rt)
    sent = message(rt, cid, "sent", attempts=1, vendor_message_id="wamid.SENT")

    result = run(env, "--message", str(sent))

    assert result.exit_code == 1
    assert f"message {sent} was sent (messageId wamid.SENT); sent messages are never requeued" in result.output
    assert row(rt, sent).status == "sent" and not events(rt, sent)
    assert run(env, "--campaign", str(cid), "--status", "sent").exit_code == 2  # not even offered


def test_nothing_with_a_vendor_acceptance_on_record_is_requeued_whatever_its_status(rt) -> None:
    # Given rows whose status says failed/unknown but the vendor's acceptance is on record
    cid = campaign(rt)
    with_id = message(rt, cid, "unknown", "worker_lost", attempts=0, vendor_message_id="wamid.X")
    with_200 = message(rt, cid, "unknown", "worker_lost", attempts=0)
    with rt.session_factory.begin() as s:
        s.add(Attempt(message_id=with_200, started_at=T0, duration_ms=5, http_status=200, outcome="sent", worker="w"))
    selection = RetrySelection(campaign_id=cid, status=MessageStatus.UNKNOWN)

    with rt.session_factory() as s:
        assert plan_retry(s, selection).total == 0
    assert requeue(rt.session_factory, selection).requeued == 0
    assert row(rt, with_id).status == row(rt, with_200).status == "unknown"


def test_retry_one_message_and_refuse_one_that_is_not_final(rt, env) -> None:
    failed = message(rt, None, "failed", "service_unavailable")  # an ad-hoc message
    pending = message(rt, None, "pending", attempts=0)

    ok = run(env, "--message", str(failed))
    assert ok.exit_code == 0 and "will requeue 1 message(s) (message %d)" % failed in ok.output
    assert row(rt, failed).status == "queued"

    refused = run(env, "--message", str(pending))
    assert refused.exit_code == 1 and "only failed or unknown" in refused.output
    assert run(env, "--message", "999999").exit_code == 1


def test_a_completed_campaign_is_reopened_and_the_dispatcher_sends_the_requeued_messages(rt, env, monkeypatch) -> None:
    cid = campaign(rt, "completed")
    mid = message(rt, cid, "failed", "service_unavailable")
    published: list[int] = []
    monkeypatch.setattr(dispatcher, "publish_send_tasks", lambda celery, ids, queue: published.extend(ids))

    result = run(env, "--campaign", str(cid), "--status", "failed")

    assert result.exit_code == 0 and "goes back to running" in result.output and "reopened" in result.output
    assert campaign_status(rt, cid) == "running"
    assert "campaign reopened: completed -> running" in events(rt, mid)[0].reason
    # the next dispatcher tick publishes it (and does not complete the campaign again)
    report = dispatcher.dispatch_tick(rt)
    assert mid in published and report.published.get(str(cid)) == 1 and cid not in report.completed
    assert row(rt, mid).enqueued_at is not None


def test_a_paused_campaign_stays_paused_and_the_command_says_so(rt, env) -> None:
    cid = campaign(rt, "paused")
    mid = message(rt, cid, "failed", "service_unavailable")

    result = run(env, "--campaign", str(cid), "--status", "failed")

    assert result.exit_code == 0 and f"campaign resume {cid}" in result.output
    assert campaign_status(rt, cid) == "paused" and row(rt, mid).status == "queued"


def test_a_cancelled_campaign_is_refused(rt, env) -> None:
    cid = campaign(rt, "cancelled")
    mid = message(rt, cid, "failed", "service_unavailable")
    result = run(env, "--campaign", str(cid), "--status", "failed")
    assert result.exit_code == 1 and "cancelled" in result.output and row(rt, mid).status == "failed"


def test_the_update_is_guarded_so_a_concurrent_change_is_not_overwritten(rt) -> None:
    # Given a plan made while both messages were failed, and one became sent before the UPDATE
    # (e.g. a second operator retried it and it went out)
    cid = campaign(rt)
    a, b = message(rt, cid, "failed", "service_unavailable"), message(rt, cid, "failed", "service_unavailable")
    with rt.session_factory.begin() as s:
        s.execute(sa.update(Message).where(Message.id == b).values(status="sent", vendor_message_id="wamid.B"))
    selection = RetrySelection(campaign_id=cid, status=MessageStatus.FAILED)

    with rt.session_factory.begin() as s:
        changed = _requeue_batch(s, selection, [a, b], utcnow())

    assert changed == {a}
    assert (row(rt, a).status, row(rt, b).status) == ("queued", "sent")


def test_batches_cover_every_match(rt) -> None:
    cid = campaign(rt)
    mids = [message(rt, cid, "failed", "service_unavailable", attempts=0) for _ in range(7)]
    result = requeue(rt.session_factory, RetrySelection(campaign_id=cid, status=MessageStatus.FAILED), batch_size=3)
    assert (result.requeued, result.left_alone) == (7, 0)
    assert all(row(rt, m).status == "queued" and len(events(rt, m)) == 1 for m in mids)


def test_bad_combinations_are_refused_with_one_line(env) -> None:
    assert "needs --status" in run(env, "--campaign", "1").output
    assert run(env, "--message", "1", "--status", "failed").exit_code == 2
    assert run(env).exit_code == 2
