"""The dispatcher's flow control and fairness, on SQLite and Postgres, with publishing observed."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from scheduler import dispatcher
from scheduler.dispatcher import allocate, dispatch_tick
from tests.conftest import make_runtime, stack_env
from worker.models import Campaign, Message, utcnow

CONTENT = {"body_text": "Hi", "buttons": [{"id": "a", "title": "A"}]}


def test_allocate_splits_equally_and_gives_what_one_cannot_use_to_the_others() -> None:
    assert allocate(90, {1: 1000, 2: 1000, 3: 1000}) == {1: 30, 2: 30, 3: 30}
    assert allocate(90, {1: 10, 2: 1000, 3: 1000}) == {1: 10, 2: 40, 3: 40}
    assert allocate(10, {1: 3, 2: 3}) == {1: 3, 2: 3}
    assert allocate(0, {1: 5}) == {}
    assert sum(allocate(7, {1: 100, 2: 100, 3: 100}).values()) == 7


@pytest.fixture()
def published(monkeypatch):  # noqa: ANN001, ANN201
    sent: list[tuple[str, list[int]]] = []
    monkeypatch.setattr(dispatcher, "publish_send_tasks", lambda celery, ids, *, queue: sent.append((queue, list(ids))))
    return sent


def seed(rt, *, campaigns: int, per_campaign: int, adhoc: int) -> list[int]:  # noqa: ANN001
    now = utcnow()
    ids = []
    with rt.session_factory.begin() as s:
        for c in range(campaigns):
            camp = Campaign(name=f"c{c}", phone_number_id="1", template=CONTENT, status="running", scheduled_at=now, started_at=now)
            s.add(camp)
            s.flush()
            ids.append(camp.id)
            s.execute(sa.insert(Message), [dict(campaign_id=camp.id, phone_number_id="1", phone=f"9665{c}{i:06d}",
                                                content=CONTENT, status="pending") for i in range(per_campaign)])
        if adhoc:
            s.execute(sa.insert(Message), [dict(phone_number_id="1", phone=f"96659{i:06d}", content=CONTENT, status="queued")
                                           for i in range(adhoc)])
    return ids


def test_ad_hoc_goes_first_campaigns_share_the_rest_and_the_broker_holds_only_a_few_ticks(empty_database, published) -> None:
    # Given 10/s, 1-second ticks, 3 ticks of look-ahead: 30 tasks may be out at once
    rt = make_runtime(stack_env(database_url=empty_database, sandbox_url="http://127.0.0.1:9", AWAL_RATE_LIMIT="10/s",
                                DISPATCH_INTERVAL_S="1", DISPATCH_LOOKAHEAD_TICKS="3"))
    c1, c2 = seed(rt, campaigns=2, per_campaign=1000, adhoc=6)
    # When the dispatcher ticks
    report = dispatch_tick(rt)
    # Then the 6 ad-hoc messages went first, and the two campaigns split the other 24 equally
    assert report.published == {"adhoc": 6, str(c1): 12, str(c2): 12}
    assert [q for q, _ in published] == ["buttoncast.adhoc", "buttoncast.campaign", "buttoncast.campaign"]
    # And while those are out, the next tick publishes nothing more (flow control)
    assert dispatch_tick(rt).total_published == 0
    rt.close()


def test_a_paused_campaign_gets_no_share(empty_database, published) -> None:
    rt = make_runtime(stack_env(database_url=empty_database, sandbox_url="http://127.0.0.1:9", AWAL_RATE_LIMIT="10/s",
                                DISPATCH_INTERVAL_S="1", DISPATCH_LOOKAHEAD_TICKS="3"))
    c1, c2 = seed(rt, campaigns=2, per_campaign=100, adhoc=0)
    with rt.session_factory.begin() as s:
        s.execute(sa.update(Campaign).where(Campaign.id == c1).values(status="paused"))
    assert dispatch_tick(rt).published == {str(c2): 30}
    rt.close()


def test_when_publishing_fails_mid_tick_what_is_on_the_broker_stays_and_the_rest_is_handed_back(empty_database, monkeypatch) -> None:
    # Given 25 pending recipients claimed in batches of 10 (published while the next is claimed),
    # and a broker that takes the first batch and then fails
    rt = make_runtime(stack_env(database_url=empty_database, sandbox_url="http://127.0.0.1:9", AWAL_RATE_LIMIT="100/s",
                                DISPATCH_INTERVAL_S="1", DISPATCH_LOOKAHEAD_TICKS="1", DISPATCH_BATCH_SIZE="10"))
    [campaign_id] = seed(rt, campaigns=1, per_campaign=25, adhoc=0)
    on_broker: list[int] = []

    def flaky(celery, ids, *, queue):  # noqa: ANN001, ANN202
        if on_broker:
            raise ConnectionError("broker went away")
        on_broker.extend(ids)

    monkeypatch.setattr(dispatcher, "publish_send_tasks", flaky)
    # When the tick runs, it fails loudly
    with pytest.raises(ConnectionError):
        dispatch_tick(rt)
    # Then the first batch is queued with its task out, and every other claimed row was handed back
    with rt.session_factory() as s:
        rows = s.execute(sa.select(Message.id, Message.status, Message.enqueued_at).where(Message.campaign_id == campaign_id)).all()
    out = sorted(r.id for r in rows if r.enqueued_at is not None)
    assert out == sorted(on_broker) and len(out) == 10
    assert all(r.status in ("queued", "pending") for r in rows)
    # And the next tick, with the broker back, publishes every one of the rest exactly once
    republished: list[int] = []
    monkeypatch.setattr(dispatcher, "publish_send_tasks", lambda celery, ids, *, queue: republished.extend(ids))
    dispatch_tick(rt)
    assert sorted(republished + on_broker) == sorted(r.id for r in rows)
    rt.close()


def test_rows_put_back_behind_where_the_last_claim_ended_are_still_dispatched(empty_database, published) -> None:
    # Given a campaign of 30 recipients, 10 published per tick (the next tick starts after the last id)
    rt = make_runtime(stack_env(database_url=empty_database, sandbox_url="http://127.0.0.1:9", AWAL_RATE_LIMIT="10/s",
                                DISPATCH_INTERVAL_S="1", DISPATCH_LOOKAHEAD_TICKS="1", DISPATCH_BATCH_SIZE="4"))
    [campaign_id] = seed(rt, campaigns=1, per_campaign=30, adhoc=0)
    dispatch_tick(rt)
    first = [i for _, ids in published for i in ids]
    assert len(first) == 10
    # When those 10 go back to pending (a pause did it) and the next ticks run, their tasks done
    with rt.session_factory.begin() as s:
        s.execute(sa.update(Message).where(Message.id.in_(first)).values(status="pending", enqueued_at=None, queued_at=None))
    for _ in range(4):
        dispatch_tick(rt)
        with rt.session_factory.begin() as s:
            s.execute(sa.update(Message).where(Message.status == "queued").values(status="sent", enqueued_at=None))
    # Then every recipient was published, the put-back ones twice (once before the pause), none lost
    everything = [i for _, ids in published for i in ids]
    with rt.session_factory() as s:
        all_ids = set(s.scalars(sa.select(Message.id).where(Message.campaign_id == campaign_id)))
        left = s.scalar(sa.select(sa.func.count()).select_from(Message).where(Message.status == "pending"))
    assert set(everything) == all_ids and left == 0
    assert sorted(everything) == sorted(list(all_ids) + first)
    rt.close()
