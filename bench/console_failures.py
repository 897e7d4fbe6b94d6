"""The reads behind the console's failure counts, filters, retry page, a campaign's opt-outs and the
audit page, on a 1,000,000-recipient campaign (issue 24 items 2 and 7): each timed and EXPLAINed.

    .venv/bin/python bench/console_failures.py [--recipients 1000000] [--runs 9]

A scratch Postgres database (dropped after): the campaign is 80 % sent (of which 4 % reported failed
later: 131047, 131026, 131050), 5 % refused when sending, 15 % pending; 20,000 of its recipients
replied STOP after it (and 20,000 other contacts opted out otherwise), and the audit trail holds
200,000 rows. Each read runs once untimed, then `--runs` times; the median and the slowest are
printed with whether the plan reads a whole table (a Seq Scan on messages would fail the goal).

Goal: every read well under the page's 200 ms (bench/console_pages.py times the pages), none
scanning the campaign's rows; the retry page's counts are the heaviest (every failed and late-failed
row is checked against the opted-out contacts).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_messages, insert_campaign, load_line, scratch_postgres  # noqa: E402

from scheduler import audit_trail, caused_opt_outs  # noqa: E402
from scheduler.retry_choices import retry_choices  # noqa: E402
from worker.models import Message  # noqa: E402
from worker.sending.history import failure_matches, list_messages, status_matches  # noqa: E402

GOAL_MS = 200.0
MIX = (("sent", 0.80), ("failed", 0.05), ("pending", 0.15))
#: late failures among the sent rows, each where id % 100 matches: 4 % of them in all
LATE = (("131047", "window_closed", "id % 100 < 2"), ("131026", "undeliverable", "id % 100 = 5"),
        ("131050", "opted_out", "id % 100 = 7"))


def build(database_url: str, recipients: int) -> int:
    counts = [int(recipients * share) for _, share in MIX]
    counts[0] += recipients - sum(counts)
    campaign_id = insert_campaign(database_url, counts[0], status="completed", message_status="sent")
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:
            first = counts[0]
            for (status, _), count in zip(MIX[1:], counts[1:]):
                add_messages(conn, campaign_id, count, status=status, enqueued=False, first_phone=first)
                first += count
            conn.execute(sa.text("UPDATE messages SET sent_at = created_at - interval '1 hour', vendor_message_id = id::text,"
                                 " delivered_at = created_at WHERE campaign_id = :c AND status = 'sent'"), {"c": campaign_id})
            conn.execute(sa.text("UPDATE messages SET last_error_code = 'invalid_phone_number' WHERE campaign_id = :c"
                                 " AND status = 'failed'"), {"c": campaign_id})
            for code, klass, share in LATE:
                conn.execute(sa.text(
                    f"UPDATE messages SET delivery_status = 'failed', delivered_at = NULL, failure_code = :code,"
                    f" failure_class = :klass, delivery_error = :words WHERE campaign_id = :c"
                    f" AND status = 'sent' AND {share}"),
                    {"c": campaign_id, "code": code, "klass": klass, "words": f"{code}: failed"})
            conn.execute(sa.text(   # 20,000 recipients replied STOP half an hour after it was sent
                "INSERT INTO contacts (phone, first_seen_at, updated_at, opted_out_at, opt_out_source, attributes)"
                " SELECT phone, sent_at, sent_at, sent_at + interval '30 minutes', 'keyword', '{}' FROM messages"
                " WHERE campaign_id = :c AND status = 'sent' AND id % 40 = 1 ON CONFLICT DO NOTHING"), {"c": campaign_id})
            conn.execute(sa.text(   # and 20,000 people of no campaign, imported from a list
                "INSERT INTO contacts (phone, first_seen_at, updated_at, opted_out_at, opt_out_source, attributes)"
                " SELECT (955000000000 + g)::text, now() at time zone 'utc', now() at time zone 'utc',"
                " now() at time zone 'utc', 'import', '{}' FROM generate_series(1, 20000) AS g"))
            conn.execute(sa.text(
                "INSERT INTO contact_events (phone, at, action, source, reason, actor)"
                " SELECT phone, opted_out_at, 'opt_out', opt_out_source,"
                " CASE WHEN opt_out_source = 'keyword' THEN 'replied STOP' END, 'webhook' FROM contacts"
                " WHERE opted_out_at IS NOT NULL"))
            conn.execute(sa.text(
                "INSERT INTO audit_events (at, actor, action, subject_type, subject_id, detail, address)"
                " SELECT now() at time zone 'utc' - g * interval '1 second', 'user:p' || (g % 40) || '@example.com',"
                " CASE WHEN g % 3 = 0 THEN 'campaign.paused' ELSE 'user.logged_in' END, 'campaign', g % 500, NULL,"
                " '10.0.0.' || (g % 200) FROM generate_series(1, 200000) AS g"))
            for table in ("messages", "contacts", "contact_events", "audit_events"):
                conn.execute(sa.text(f"ANALYZE {table}"))
    finally:
        engine.dispose()
    return campaign_id


def plan_of(session: Session, statement: sa.Executable) -> str:
    compiled = statement.compile(dialect=session.get_bind().dialect, compile_kwargs={"literal_binds": True})
    return "\n".join(session.execute(sa.text(f"EXPLAIN {compiled}")).scalars())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    with scratch_postgres("failures") as database_url:
        started = time.perf_counter()
        cid = build(database_url, args.recipients)
        print(f"campaign {cid}: {args.recipients:,} recipients stored in {time.perf_counter() - started:.0f} s", flush=True)
        print(load_line(), flush=True)
        engine = sa.create_engine(database_url)
        reads: list[tuple[str, Callable[[Session], object]]] = [
            *[(f"recipients, {what}, page 1", lambda s, kw=kw: list_messages(s, campaign_id=cid, after_id=0, limit=50,
                                                                             late_failures=True, **kw))
              for what, kw in (("status failed", {"status": "failed"}), ("error 131047", {"error_code": "131047"}),
                               ("reason window_closed", {"error_code": "window_closed"}),
                               ("reason opted_out", {"error_code": "opted_out"}),
                               ("status sent", {"status": "sent"}))],
            ("retry page: every reason with its count", lambda s: retry_choices(s, cid)),
            ("opt-outs it caused: the count", lambda s: caused_opt_outs.caused_count(s, cid)),
            ("opt-outs it caused: page 1", lambda s: caused_opt_outs.caused_page(s, cid)),
            ("audit page 1", lambda s: audit_trail.audit_page(s, audit_trail.AuditFilter())),
            ("audit page, who p7", lambda s: audit_trail.audit_page(s, audit_trail.AuditFilter(actor="p7@"))),
            ("audit page, campaign 12", lambda s: audit_trail.audit_page(
                s, audit_trail.AuditFilter(subject_type="campaign", subject_id=12))),
        ]
        worst = 0.0
        try:
            with Session(engine) as session:
                for label, read in reads:
                    read(session)
                    times = []
                    for _ in range(args.runs):
                        clock = time.perf_counter()
                        read(session)
                        times.append((time.perf_counter() - clock) * 1000)
                    worst = max(worst, max(times))
                    print(f"  {label:<44} median {statistics.median(times):7.1f} ms  slowest {max(times):7.1f} ms", flush=True)
                for what, cond in (("status failed", status_matches("failed")), ("error 131047", failure_matches("131047"))):
                    statement = sa.select(Message.id).where(Message.campaign_id == cid, cond).order_by(Message.id).limit(50)
                    plan = plan_of(session, statement)
                    print(f"plan, recipients {what}:\n    " + plan.replace("\n", "\n    "))
        finally:
            engine.dispose()
        print(load_line())
        print(f"slowest {worst:.1f} ms (goal < {GOAL_MS:.0f} ms): {'met' if worst < GOAL_MS else 'NOT met'}")


if __name__ == "__main__":
    main()
