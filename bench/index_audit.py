"""The indexes of `messages` against the queries that read it, and what a status change costs with
them: migration 0017's set (before) and the head's (after), on the same 1,000,000-row table.

    .venv/bin/python bench/index_audit.py [--recipients 1000000] [--changes 2000] [--rounds 2]

A scratch Postgres database (dropped after) migrated to 0017 and filled in one INSERT ... SELECT:
a completed campaign (a fifth of the rows, all sent), a running one (sent, failed, pending, a few
queued and sending, some of them stale), 20,000 ad-hoc API messages, 1,000 contacts who opted out.
Then `--rounds` times, each index set in turn (alembic moves the same table between 0017 and the
head, then VACUUM ANALYZE):

- every query of the list below: EXPLAIN (ANALYZE, BUFFERS) three times (an UPDATE once, inside a
  transaction rolled back); the indexes its plan reads and the median execution time;
- `--changes` messages queued -> sending -> sent, one autocommit UPDATE each with the send path's
  own statements (worker.sending.store._CLAIM and _RECORD_SENT): ms per message, the share of
  HOT updates (pg_stat_user_tables), and WAL records and bytes per message (EXPLAIN (ANALYZE, WAL)
  of 200 more: each index entry written is one WAL record);
- two writes that change no status, for their HOT share: the sweeper's hand-back of a queued row
  (enqueued_at, updated_at) and a `delivered` webhook (delivery_status, delivered_at).

Prints before and after side by side, the index sizes, and the load average. A query whose plan
reads `messages` without an index (Seq Scan) is marked; the goal is none in the after column
except the campaign's tally, which reads the whole campaign by design (scheduler.snapshots).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_line, scratch_postgres  # noqa: E402

from scheduler import caused_opt_outs, dispatcher, recipient_preview  # noqa: E402
from scheduler.retry import LATE_FAILED, RetrySelection  # noqa: E402
from worker.db import alembic_config  # noqa: E402
from worker.models import Campaign, Message  # noqa: E402
from worker.sending import gate as consent_gate  # noqa: E402
from worker.sending import history, store  # noqa: E402
from worker.settings import FrequencyCap  # noqa: E402
from worker.status import MessageStatus  # noqa: E402

BEFORE, AFTER = "0017", "head"
PAGE = 50                     # the console's recipients page, the API's default page
WAL_SAMPLE = 200              # status changes measured with EXPLAIN (ANALYZE, WAL)
AD_HOC = 20_000
OPTED_OUT = 1_000
NOW_UTC = datetime.now(timezone.utc).replace(microsecond=0)   # what the application passes (aware)
NOW = NOW_UTC.replace(tzinfo=None)   # as stored: for EXPLAIN, whose parameters skip the types' conversion
PHONE0 = 966_500_000_000


# --- the table -----------------------------------------------------------------------------------

def build(url: str, recipients: int, pool: int) -> dict[str, int]:
    """The rows; returns the ids the queries and the writes use."""
    old_n = recipients // 5
    run_n = recipients - old_n
    sent_n, failed_n = int(run_n * 0.60), int(run_n * 0.04)
    stale_n, lost_n, inflight_n = 200, 50, 500   # queued long ago, sending long ago, queued and sending now
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        def campaign(status: str) -> int:
            return conn.execute(sa.text(
                "INSERT INTO campaigns (name, phone_number_id, template, status, scheduled_at, consecutive_failures,"
                " recipients_imported, rows_rejected, created_at, started_at, updated_at)"
                " VALUES ('audit', '123456', '{}', :s, :t, 0, 0, 0, :t, :t, :t) RETURNING id"),
                {"s": status, "t": NOW - timedelta(hours=3)}).scalar_one()
        old, run = campaign("completed"), campaign("running")
        # g's ranges in the running campaign: sent | failed | the write pools | stale | lost | in flight | pending
        cuts = {"sent": sent_n, "failed": sent_n + failed_n}
        cuts["pool"] = cuts["failed"] + pool
        cuts["handback"] = cuts["pool"] + pool
        cuts["stale"] = cuts["handback"] + stale_n
        cuts["lost"] = cuts["stale"] + lost_n
        cuts["inflight"] = cuts["lost"] + inflight_n
        status = ("CASE WHEN g <= :sent THEN 'sent' WHEN g <= :failed THEN 'failed' WHEN g <= :handback THEN 'queued'"
                  " WHEN g <= :stale THEN 'queued' WHEN g <= :lost THEN 'sending'"
                  " WHEN g <= :inflight THEN (CASE WHEN g % 2 = 0 THEN 'queued' ELSE 'sending' END) ELSE 'pending' END")
        sent = "g <= :sent"
        conn.execute(sa.text(f"""
            INSERT INTO messages (campaign_id, phone_number_id, phone, content, status, attempts, created_at, updated_at,
                queued_at, enqueued_at, sending_at, sent_at, finished_at, vendor_message_id, delivery_status, delivered_at,
                replied_at, reply_button_id, reply_button_title, last_error_code, failure_code, failure_class, claim_token)
            SELECT c, '123456', (:p0 + g)::text, '{{"body_text": "Hello", "buttons": [{{"id": "reserve", "title": "Reserve"}}]}}',
                st, CASE WHEN st IN ('sent', 'failed') THEN 1 ELSE 0 END, :t0, :t0 + g * interval '5 ms',
                CASE WHEN st <> 'pending' THEN :t0 END,
                CASE WHEN st = 'queued' THEN
                     (CASE WHEN g > :handback AND g <= :stale THEN :now - interval '1 hour' ELSE :now END) END,
                CASE WHEN st = 'sending' THEN (CASE WHEN g <= :lost THEN :now - interval '1 hour' ELSE :now END) END,
                CASE WHEN s THEN :t0 + g * interval '5 ms' END,
                CASE WHEN st IN ('sent', 'failed') THEN :t0 + g * interval '5 ms' END,
                CASE WHEN s THEN 'wamid.' || c || '.' || g END,
                CASE WHEN s THEN (CASE WHEN g % 50 = 3 THEN 'failed' ELSE 'delivered' END) END,
                CASE WHEN s AND g % 50 <> 3 THEN :t0 + g * interval '5 ms' END,
                CASE WHEN s AND g % 7 = 0 THEN :t0 END, CASE WHEN s AND g % 7 = 0 THEN 'reserve' END,
                CASE WHEN s AND g % 7 = 0 THEN 'Reserve' END,
                CASE WHEN st = 'failed' THEN (CASE WHEN g % 3 = 0 THEN '131026' ELSE 'invalid_phone_number' END) END,
                CASE WHEN s AND g % 50 = 3 THEN '131047' END, CASE WHEN s AND g % 50 = 3 THEN 'window_closed' END,
                CASE WHEN st = 'sending' THEN 'token-' || g END
            FROM (SELECT c, g, {status} AS st, {sent} AS s
                  FROM (SELECT :old AS c, g FROM generate_series(1, :old_n) g
                        UNION ALL SELECT :run, g FROM generate_series(1, :run_n) g) r0) r
            """), {
                "p0": PHONE0, "t0": NOW - timedelta(hours=3), "now": NOW, "old": old, "run": run, "old_n": old_n,
                "run_n": run_n, "pool": pool, **cuts})
        conn.execute(sa.text("UPDATE messages SET status = 'sent' WHERE campaign_id = :c AND status <> 'sent'"), {"c": old})
        # ad-hoc API messages of two keys, to phones that also got the campaigns (a contact's history)
        conn.execute(sa.text("""
            INSERT INTO messages (campaign_id, phone_number_id, phone, content, status, attempts, created_at, updated_at,
                queued_at, sent_at, finished_at, vendor_message_id, idempotency_key, api_key_id)
            SELECT NULL, '123456', (:p0 + (g * 37) % :n)::text, '{"body_text": "Your code"}',
                CASE WHEN g % 1000 = 0 THEN 'queued' ELSE 'sent' END, 1, :t0, :t0, :t0,
                CASE WHEN g % 1000 <> 0 THEN :t0 + g * interval '1 s' END, CASE WHEN g % 1000 <> 0 THEN :t0 END,
                CASE WHEN g % 1000 <> 0 THEN 'wamid.adhoc.' || g END, 'key-' || g, 1 + g % 2
            FROM generate_series(1, :m) g"""), {"p0": PHONE0, "n": run_n, "t0": NOW - timedelta(hours=2), "m": AD_HOC})
        conn.execute(sa.text("""
            INSERT INTO contacts (phone, first_seen_at, updated_at, opted_out_at, opt_out_source, attributes)
            SELECT (:p0 + g * 7)::text, :t0, :t0, :t0 + interval '1 hour', 'keyword', '{}' FROM generate_series(1, :k) g"""),
            {"p0": PHONE0, "t0": NOW - timedelta(hours=3), "k": OPTED_OUT})
        conn.execute(sa.text("""
            INSERT INTO contact_events (phone, at, action, source, reason)
            SELECT phone, opted_out_at, 'opt_out', 'keyword', 'STOP' FROM contacts"""))
        ids = {"old": old, "run": run}
        ids["pool_first"] = conn.execute(sa.text(
            "SELECT min(id) FROM messages WHERE campaign_id = :c AND status = 'queued'"), {"c": run}).scalar_one()
        ids["queued_last"] = conn.execute(sa.text(
            "SELECT max(id) FROM messages WHERE campaign_id = :c AND status = 'queued'"), {"c": run}).scalar_one()
        ids["handback_first"] = ids["pool_first"] + pool
        ids["pending_first"] = conn.execute(sa.text(
            "SELECT min(id) FROM messages WHERE campaign_id = :c AND status = 'pending'"), {"c": run}).scalar_one()
        ids["sent_first"] = conn.execute(sa.text(
            "SELECT min(id) FROM messages WHERE campaign_id = :c AND status = 'sent'"), {"c": run}).scalar_one()
        ids["page500"] = conn.execute(sa.text(
            "SELECT id FROM messages WHERE campaign_id = :c ORDER BY id OFFSET :o LIMIT 1"),
            {"c": run, "o": PAGE * 499}).scalar_one()
        conn.execute(sa.text("UPDATE campaigns SET recipients_imported = (SELECT count(*) FROM messages m"
                             " WHERE m.campaign_id = campaigns.id)"))
    engine.dispose()
    return ids


def set_indexes(url: str, revision: str) -> float:
    """Move the table to `revision`'s indexes (alembic upgrade or downgrade); seconds taken."""
    from alembic import command

    started = time.perf_counter()
    config = alembic_config(url)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        current = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
    engine.dispose()
    if revision == "head":
        command.upgrade(config, "head")
    elif current != revision:
        command.downgrade(config, revision)
    vacuum(url)
    return time.perf_counter() - started


def vacuum(url: str) -> None:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text("VACUUM ANALYZE messages"))
    engine.dispose()


# --- the queries ---------------------------------------------------------------------------------

Query = Callable[[dict[str, int], Session], tuple[sa.Executable, dict]]


def _q(statement: sa.Executable, params: dict | None = None) -> tuple[sa.Executable, dict]:
    return statement, params or {}


def _claim(ids: dict[str, int], campaign_id: int | None, kind: str, cursor: int) -> tuple[sa.Executable, dict]:
    due, pending = dispatcher._ready_kinds(NOW)
    where = Message.campaign_id == campaign_id if campaign_id is not None else Message.campaign_id.is_(None)
    ready = sa.and_(where, due if kind == "due" else pending, *([Message.id > cursor] if cursor else []))
    gate = consent_gate.Gate(frequency_cap=FrequencyCap(count=2, period_s=86_400))
    return _q(dispatcher._claim_statement("postgresql", ready, 500, NOW, gate), {"p_now": NOW, **gate.params(NOW)})


def _recipients(ids: dict[str, int], *where: sa.ColumnElement[bool], after: int = 0) -> tuple[sa.Executable, dict]:
    """The console's recipients table (worker.sending.history.list_messages with after_id, late_failures)."""
    return _q(history._keyset_page([*where, Message.campaign_id == ids["run"], Message.id > after], Message.id.asc(), PAGE))


def _in_flight(ids: dict[str, int], s: Session) -> tuple[sa.Executable, dict]:
    return _q(sa.select(sa.func.count()).select_from(Message).where(
        sa.or_(Message.status == "sending", sa.and_(Message.status == "queued", Message.enqueued_at.is_not(None)))))


def _ready_count(ids: dict[str, int], kind: int) -> tuple[sa.Executable, dict]:
    rows = sa.select(Message.id).where(Message.campaign_id == ids["run"], dispatcher._ready_kinds(NOW)[kind]).limit(500).subquery()
    return _q(sa.select(sa.func.count()).select_from(rows))


def _lost(ids: dict[str, int], s: Session) -> tuple[sa.Executable, dict]:
    return _q(sa.update(Message).where(Message.status == "sending", Message.sending_at < NOW - timedelta(minutes=10))
              .values(status="unknown", finished_at=NOW, updated_at=NOW).returning(Message.id))


_STALE = sa.and_(Message.status == "queued", Message.enqueued_at.is_not(None),
                 Message.enqueued_at < NOW - timedelta(minutes=10))
_LEFT = ["pending", "queued", "sending"]
_UNFINISHED = ["pending", "queued", "sending", "held"]


def _busy_exists(statuses: list[str]) -> sa.ColumnElement[bool]:
    return sa.select(Message.id).where(Message.campaign_id == Campaign.id, Message.status.in_(statuses)).exists()


QUERIES: list[tuple[str, str, Query]] = [
    # (who asks, what, the statement)
    ("send", "claim queued->sending, capped (store._CLAIM_CAPPED)", lambda i, s: _q(store._CLAIM_CAPPED, {
        "p_message_id": i["queued_last"], "p_now": NOW, "p_token": "t", "p_worker": "w",
        **consent_gate.Gate(FrequencyCap(count=2, period_s=86_400)).params(NOW)})),
    ("send", "record_sent / record_error / defer (by id)", lambda i, s: _q(store._RECORD_SENT, {
        "p_message_id": i["pool_first"] - 1, "p_token": "t", "p_now": NOW, "p_vendor_id": 1, "p_vendor_message_id": "w1",
        "p_vendor_status": "accepted", "p_counted": 1})),
    ("send", "messageId already held (store._vendor_message_id_holder)", lambda i, s: _q(
        sa.select(Message.id).where(Message.vendor_message_id == f"wamid.{i['run']}.77", Message.id != 1).limit(1))),
    ("send", "frequency cap: sent to a phone since (gate.barred_reason)", lambda i, s: _q(
        sa.select(sa.func.count()).select_from(Message).where(
            Message.phone == str(PHONE0 + 77), Message.campaign_id.is_not(None), Message.sent_at >= NOW - timedelta(days=1)))),
    ("dispatch", "in flight (in_flight_count)", _in_flight),
    ("dispatch", "ready: due queued of a campaign (_ready_count)", lambda i, s: _ready_count(i, 0)),
    ("dispatch", "ready: pending of a campaign (_ready_count)", lambda i, s: _ready_count(i, 1)),
    ("dispatch", "claim 500 pending from the cursor (_claim_statement)", lambda i, s: _claim(i, i["run"], "pending", i["pending_first"] + 10_000)),
    ("dispatch", "claim 500 pending from the start (cursor 0)", lambda i, s: _claim(i, i["run"], "pending", 0)),
    ("dispatch", "claim ad hoc due (campaign_id IS NULL)", lambda i, s: _claim(i, None, "due", 0)),
    ("dispatch", "complete finished campaigns (lifecycle)", lambda i, s: _q(
        sa.update(Campaign).where(Campaign.status == "running", ~_busy_exists(_UNFINISHED))
        .values(status="completed").returning(Campaign.id))),
    ("dispatch", "cancel leftovers of cancelled campaigns", lambda i, s: _q(
        sa.update(Message).where(Message.campaign_id.in_(sa.select(Campaign.id).where(Campaign.status == "cancelled")),
                                 Message.status == "pending").values(status="cancelled").returning(Message.id))),
    ("sweep", "lost mid-request: sending too long -> unknown", _lost),
    ("sweep", "stale queued (_hand_back_stale_queued)", lambda i, s: _q(sa.select(Message.id).where(_STALE))),
    ("sweep", "broker lost its tasks: hand back queued", lambda i, s: _q(
        sa.update(Message).where(Message.status == "queued", Message.enqueued_at.is_not(None),
                                 Message.enqueued_at < NOW - timedelta(minutes=10)).values(enqueued_at=None))),
    ("sweep", "queue depth gauge by campaign and status", lambda i, s: _q(
        sa.select(Message.campaign_id, Message.status, sa.func.count()).where(Message.status.in_(_LEFT))
        .group_by(Message.campaign_id, Message.status))),
    ("sweep", "reopen raced campaigns (lifecycle)", lambda i, s: _q(
        sa.select(Campaign.id).where(Campaign.status == "completed", _busy_exists(_UNFINISHED)))),
    ("api", "queue depth by status (report.queue_depth)", lambda i, s: _q(
        sa.select(Message.status, sa.func.count()).where(Message.status.in_(_LEFT)).group_by(Message.status))),
    ("api", "nothing left to send (run --until-idle)", lambda i, s: _q(
        sa.select(sa.func.count()).select_from(Message).where(
            Message.status.in_(["queued", "sending"]) | ((Message.status == "pending") & Message.campaign_id.is_(None))))),
    ("api", "a key's messages, newest first (history)", lambda i, s: _q(
        sa.select(Message).where(Message.api_key_id == 1).order_by(Message.id.desc()).limit(PAGE))),
    ("api", "messages to a phone, newest first (history)", lambda i, s: _q(
        sa.select(Message).where(Message.phone == str(PHONE0 + 77)).order_by(Message.id.desc()).limit(PAGE))),
    ("api", "by Idempotency-Key (enqueue._by_key)", lambda i, s: _q(
        sa.select(Message.id).where(Message.idempotency_key == "key-77"))),
    ("console", "campaign tally (report.tally: the whole campaign)", lambda i, s: _q(
        sa.select(Message.status, Message.reply_button_id, Message.failure_class, sa.func.count(), sa.func.count(Message.sent_at))
        .where(Message.campaign_id == i["run"]).group_by(Message.status, Message.reply_button_id, Message.failure_class))),
    ("console", "status counts of listed campaigns (campaigns)", lambda i, s: _q(
        sa.select(Message.campaign_id, Message.status, sa.func.count())
        .where(Message.campaign_id.is_not(None), Message.campaign_id.in_([i["old"]]))
        .group_by(Message.campaign_id, Message.status))),
    ("console", "recipients page 1", lambda i, s: _recipients(i)),
    ("console", "recipients page 500", lambda i, s: _recipients(i, after=i["page500"])),
    ("console", "recipients, status failed, page 1", lambda i, s: _recipients(i, history.status_matches("failed"))),
    ("console", "recipients, status pending, page 1", lambda i, s: _recipients(i, history.status_matches("pending"))),
    ("console", "recipients, error 131047 (late), page 1", lambda i, s: _recipients(i, history.failure_matches("131047"))),
    ("console", "recipients, button tapped, page 1", lambda i, s: _recipients(i, Message.reply_button_id == "reserve")),
    ("console", "recipient picker: phones starting 96650001", lambda i, s: _q(
        sa.select(Message.id, Message.phone).where(Message.campaign_id == i["run"], Message.phone >= "96650001",
                                                   Message.phone < recipient_preview._next_prefix("96650001"))
        .order_by(Message.phone).limit(10))),
    ("console", "retry page: late failures by class (retry_choices)", lambda i, s: _q(
        sa.select(Message.failure_class, sa.func.count()).where(
            Message.campaign_id == i["run"], Message.failure_class.is_not(None), *LATE_FAILED).group_by(Message.failure_class))),
    ("console", "retry page: failed at send by code (retry.plan)", lambda i, s: _q(
        sa.select(Message.status, Message.last_error_code, sa.func.count()).where(
            RetrySelection(campaign_id=i["run"], status=MessageStatus.FAILED).where())
        .group_by(Message.status, Message.last_error_code))),
    ("console", "opt-outs the campaign caused (caused_opt_outs)", lambda i, s: _q(
        sa.select(sa.func.count()).select_from(
            caused_opt_outs._caused(s, i["run"], NOW - timedelta(hours=3)).subquery()))),
    ("console", "a contact's recent messages (contacts.service)", lambda i, s: _q(
        sa.select(Message.id, Message.status, Message.sent_at).where(Message.phone == str(PHONE0 + 77))
        .order_by(Message.id.desc()).limit(20))),
    ("console", "a contact's last sent (contacts.service)", lambda i, s: _q(
        sa.select(sa.func.max(Message.sent_at)).where(Message.phone == str(PHONE0 + 77)))),
    ("console", "experiment: pending without a variant (assign)", lambda i, s: _q(
        sa.select(Message.id).where(Message.campaign_id == i["run"], Message.status == "pending",
                                    Message.variant.is_(None)).limit(1000))),
    ("console", "experiment: held count (experiments)", lambda i, s: _q(
        sa.select(sa.func.count()).select_from(Message).where(Message.campaign_id == i["run"], Message.status == "held"))),
    ("console", "audience: last phone stored (audience)", lambda i, s: _q(
        sa.select(sa.func.max(Message.phone)).where(Message.campaign_id == i["run"]))),
    ("webhook", "status event by messageId (apply.find_message)", lambda i, s: _q(
        sa.select(Message.id).where(Message.vendor_message_id == f"wamid.{i['run']}.4242"))),
    ("webhook", "reply without context: latest sent to the phone", lambda i, s: _q(
        sa.select(Message.id, Message.content).where(Message.phone == str(PHONE0 + 77), Message.sent_at.is_not(None),
                                                     Message.sent_at <= NOW).order_by(Message.sent_at.desc(), Message.id.desc()).limit(3))),
    ("webhook", "breaker: the campaign's last 200 sent (breaker)", lambda i, s: _q(
        sa.select(Message.failure_class).where(Message.campaign_id == i["run"], Message.sent_at.is_not(None))
        .order_by(Message.sent_at.desc()).limit(200))),
]


def plan_nodes(node: dict) -> list[dict]:
    return [node] + [n for child in node.get("Plans", []) for n in plan_nodes(child)]


def driver_sql(conn: sa.Connection, statement: sa.Executable, params: dict) -> tuple[str, dict]:
    """The SQL and parameters the driver gets (IN lists expanded); no type conversion: naive times."""
    compiled = statement.compile(dialect=conn.dialect)
    expanded = compiled._process_parameters_for_postcompile(compiled.construct_params(params))
    return expanded.statement, expanded.parameters


def explain(conn: sa.Connection, statement: sa.Executable, params: dict, runs: int = 3) -> tuple[list[str], float, bool]:
    """(indexes of messages the plan reads, median execution ms, whether it scans messages without one)."""
    sql, bound = driver_sql(conn, statement, params)
    times, plan = [], None
    if isinstance(statement, sa.Update):   # once: each rolled-back run leaves dead row versions behind
        runs = 1
    for _ in range(runs):
        with conn.begin() as tx:
            out = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, bound).scalar_one()
            tx.rollback()
        plan = out[0]
        times.append(plan["Execution Time"])
    nodes = plan_nodes(plan["Plan"])
    used = []
    for n in nodes:
        name = n.get("Index Name", "")
        if ("messages" in name or name == "pk_messages") and name not in used:
            used.append(name)
    seq = any(n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "messages" for n in nodes)
    return used, statistics.median(times), seq


# --- the writes ----------------------------------------------------------------------------------

def stats(conn: sa.Connection) -> tuple[int, int]:
    conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
    return tuple(conn.execute(sa.text(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'messages'")).one())


def timed_writes(url: str, write: Callable[[sa.Connection, int], int], ids: range) -> tuple[float, float]:
    """Run `write` for each id on one autocommit connection: (ms per id, HOT share of its updates)."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn, engine.connect() as reader:
        before = stats(reader)
        started = time.perf_counter()
        for message_id in ids:
            write(conn, message_id)
        elapsed = time.perf_counter() - started
        conn.execute(sa.text("SELECT pg_stat_force_next_flush()"))
        conn.execute(sa.text("SELECT 1"))   # goes idle: its counters reach the shared stats
        time.sleep(0.3)
        after = stats(reader)
    engine.dispose()
    updates = after[0] - before[0]
    return elapsed * 1000 / len(ids), (after[1] - before[1]) / updates if updates else float("nan")


def status_change(conn: sa.Connection, message_id: int, explain_wal: bool = False) -> tuple[int, int]:
    """queued -> sending -> sent with the send path's statements; (WAL records, WAL bytes) if asked."""
    now = NOW if explain_wal else NOW_UTC
    claim = {"p_message_id": message_id, "p_now": now, "p_token": f"t{message_id}", "p_worker": "bench",
             **consent_gate.NO_CAP.params(now)}
    sent = {"p_message_id": message_id, "p_token": f"t{message_id}", "p_now": now, "p_vendor_id": message_id,
            "p_vendor_message_id": f"wamid.bench.{message_id}", "p_vendor_status": "accepted", "p_counted": 1}
    if not explain_wal:
        assert conn.execute(store._CLAIM, claim).rowcount == 1, message_id
        assert conn.execute(store._RECORD_SENT, sent).rowcount == 1, message_id
        return 0, 0
    records = size = 0
    for statement, params in ((store._CLAIM, claim), (store._RECORD_SENT, sent)):
        sql, bound = driver_sql(conn, statement, params)
        out = conn.exec_driver_sql("EXPLAIN (ANALYZE, WAL, FORMAT JSON) " + sql, bound).scalar_one()[0]["Plan"]
        records += out["WAL Records"]
        size += out["WAL Bytes"]
    return records, size


def status_change_wal(url: str, ids: range) -> tuple[float, float]:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    records = size = 0
    with engine.connect() as conn:
        for message_id in ids:
            r, b = status_change(conn, message_id, explain_wal=True)
            records, size = records + r, size + b
    engine.dispose()
    return records / len(ids), size / len(ids)


def hand_back(conn: sa.Connection, message_id: int) -> int:
    return conn.execute(sa.update(Message).where(Message.id == message_id, Message.status == "queued")
                        .values(enqueued_at=None, updated_at=NOW_UTC)).rowcount


def delivered(conn: sa.Connection, message_id: int) -> int:
    return conn.execute(sa.update(Message).where(Message.id == message_id)
                        .values(delivery_status="read", read_at=NOW_UTC)).rowcount


def index_sizes(url: str) -> list[tuple[str, int, str]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT i.relname, pg_relation_size(i.oid), pg_get_indexdef(i.oid) FROM pg_index x"
            " JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = 'messages'::regclass ORDER BY 1")).all()
    engine.dispose()
    return [tuple(r) for r in rows]


# --- the run -------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--changes", type=int, default=2000, help="status changes per round and index set")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    sets = (BEFORE, AFTER)
    per_round = args.changes + WAL_SAMPLE
    pool = per_round * args.rounds * len(sets)
    with scratch_postgres("indexaudit") as url:
        from alembic import command

        command.downgrade(alembic_config(url), BEFORE)   # the helper migrates to head; the table starts at 0017
        started = time.perf_counter()
        ids = build(url, args.recipients, pool)
        print(f"{args.recipients:,} campaign messages + {AD_HOC:,} ad hoc stored in {time.perf_counter() - started:.0f} s; "
              f"{args.rounds} round(s) of {' / '.join(sets)}, {args.changes} status changes each", flush=True)
        print(load_line(), flush=True)
        timings: dict[tuple[str, str], list[float]] = {}
        plans: dict[tuple[str, str], tuple[list[str], bool]] = {}
        writes: dict[tuple[str, str], list[float]] = {}
        sizes: dict[str, list] = {}
        next_id = {"change": ids["pool_first"], "handback": ids["handback_first"], "delivered": ids["sent_first"]}
        for round_no in range(args.rounds):
            for which in sets:
                took = set_indexes(url, which)
                print(f"round {round_no + 1}: indexes of {which} in place ({took:.0f} s with VACUUM ANALYZE); "
                      f"{load_line()}", flush=True)
                sizes[which] = index_sizes(url)
                engine = sa.create_engine(url)
                with engine.connect() as conn, Session(bind=conn) as session:
                    for who, what, query in QUERIES:
                        statement, params = query(ids, session)
                        used, ms, seq = explain(conn, statement, params)
                        timings.setdefault((which, what), []).append(ms)
                        plans[(which, what)] = (used, seq)
                engine.dispose()
                first = next_id["change"]
                ms, hot = timed_writes(url, status_change, range(first, first + args.changes))
                records, size = status_change_wal(url, range(first + args.changes, first + per_round))
                next_id["change"] += per_round
                writes.setdefault((which, "change ms"), []).append(ms)
                writes.setdefault((which, "change hot"), []).append(hot)
                writes.setdefault((which, "wal records"), []).append(records)
                writes.setdefault((which, "wal bytes"), []).append(size)
                for name, write in (("handback", hand_back), ("delivered", delivered)):
                    first = next_id[name]
                    ms, hot = timed_writes(url, write, range(first, first + args.changes))
                    next_id[name] += args.changes
                    writes.setdefault((which, f"{name} ms"), []).append(ms)
                    writes.setdefault((which, f"{name} hot"), []).append(hot)
                print(f"  status change {writes[(which, 'change ms')][-1]:.3f} ms, "
                      f"{writes[(which, 'wal records')][-1]:.1f} WAL records; {load_line()}", flush=True)
        report(sets, timings, plans, writes, sizes)
        print(load_line())


def report(sets: tuple[str, str], timings: dict, plans: dict, writes: dict, sizes: dict) -> None:
    before, after = sets
    print("\nqueries (median of 3 EXPLAIN ANALYZE runs per round, median over rounds; * = Seq Scan of messages)")
    print(f"  {'who':<8} {'query':<54} {before + ' ms':>10} {after + ' ms':>10}  indexes read: {before} -> {after}")
    for who, what, _ in QUERIES:
        b, a = statistics.median(timings[(before, what)]), statistics.median(timings[(after, what)])
        (bu, bs), (au, as_) = plans[(before, what)], plans[(after, what)]
        print(f"  {who:<8} {what:<54} {b:>9.2f}{'*' if bs else ' '} {a:>9.2f}{'*' if as_ else ' '}  "
              f"{', '.join(bu) or '-'} -> {', '.join(au) or '-'}")
    print("\nwrites, one autocommit UPDATE per row (median over rounds; each round's figures in brackets)")

    def line(label: str, key: str, fmt: str) -> None:
        cells = []
        for which in sets:
            values = writes[(which, key)]
            cells.append(f"{which} {format(statistics.median(values), fmt)} [{', '.join(format(v, fmt) for v in values)}]")
        print(f"  {label:<58} " + "   ".join(cells))

    line("status change queued->sending->sent, ms per message", "change ms", ".3f")
    line("  HOT share of its updates", "change hot", ".2f")
    line("  WAL records per message (heap + index entries)", "wal records", ".1f")
    line("  WAL bytes per message", "wal bytes", ".0f")
    line("sweeper hand-back (enqueued_at, updated_at), ms per row", "handback ms", ".3f")
    line("  HOT share", "handback hot", ".2f")
    line("read webhook (delivery_status, read_at), ms per row", "delivered ms", ".3f")
    line("  HOT share", "delivered hot", ".2f")
    for which in sets:
        total = sum(size for _, size, _ in sizes[which])
        print(f"\nindexes of messages at {which}: {len(sizes[which])}, {total / 2**20:.0f} MiB")
        for name, size, definition in sizes[which]:
            print(f"  {name:<34} {size / 2**20:6.1f} MiB  {definition.split(' USING ', 1)[1]}")


if __name__ == "__main__":
    main()
