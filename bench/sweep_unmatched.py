"""Issue 12 item 15: the sweep's webhook matching with 1,000,000 old unmatched events, before and after.

Fills a scratch Postgres database with `--events` unmatched status events received days ago (other
apps' messages on the same account: their wamids match no message of ours), plus `--young` recent
unmatched ones of which `--matching` do match a message, next to `--messages` sent messages of
ours; ANALYZEs; then times, in the same run and on
the same data:
- before: main's matching queries (every unmatched event rescanned, ordered by id);
- after: `match_pending_events` with WEBHOOK_MATCH_WINDOW_S (default 1 day), which only looks at
  events received inside the window through the partial index of migration 0004.
Each is run `--runs` times inside a rolled-back transaction (nothing is matched for real, so every
run sees the same rows); prints the median and max in ms.

    PYTHONPATH=. /work/venv/bin/python bench/sweep_unmatched.py --events 1000000
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

from bench.common import load_line, scratch_postgres  # noqa: E402
from worker.db import make_engine, make_session_factory  # noqa: E402
from worker.models import Message  # noqa: E402
from worker.settings import WEBHOOK_MATCH_WINDOW_S  # noqa: E402
from worker.webhooks.apply import PENDING_BATCH, _apply_pending, match_pending_events  # noqa: E402
from worker.webhooks.models import EventKind, WebhookEvent  # noqa: E402

FILL_SQL = """
INSERT INTO webhook_events (dedupe_key, event_type, kind, vendor_message_id, phone, status, occurred_at,
                            received_at, matched, body)
SELECT md5(:tag || g::text) || md5(g::text || :tag), 'message.status.updated', 'status',
       'wamid.' || :tag || g, '9665' || (10000000 + g % 1000000), 'delivered',
       now() AT TIME ZONE 'UTC' - make_interval(secs => :age_s + g % 86400),
       now() AT TIME ZONE 'UTC' - make_interval(secs => :age_s + g % 86400), false,
       '{"event":"message.status.updated","data":{"message_id":"wamid.' || :tag || g || '","status":"delivered"}}'
FROM generate_series(1, :n) AS g
"""
MESSAGES_SQL = """
INSERT INTO messages (phone_number_id, phone, content, status, attempts, vendor_message_id, created_at,
                      updated_at, sent_at)
SELECT '123456', '9665' || (20000000 + g), '{}', 'sent', 1, :prefix || g,
       now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC'
FROM generate_series(1, :n) AS g
"""


def main_before(session: Session, limit: int = PENDING_BATCH) -> int:
    """main's match_pending_events (before item 15): every unmatched event, by id, no time bound."""
    by_wamid = session.execute(
        sa.select(WebhookEvent.id, WebhookEvent.body, WebhookEvent.received_at, Message.id)
        .join(Message, Message.vendor_message_id == WebhookEvent.vendor_message_id)
        .where(WebhookEvent.matched.is_(False), WebhookEvent.kind.in_([EventKind.STATUS, EventKind.REPLY]))
        .order_by(WebhookEvent.id)
        .limit(limit)
    ).all()
    matched = sum(_apply_pending(session, eid, body, rec, mid) for eid, body, rec, mid in by_wamid)
    if len(by_wamid) < limit:
        has_message = sa.exists().where(Message.phone == WebhookEvent.phone, Message.sent_at.is_not(None),
                                        Message.sent_at <= WebhookEvent.occurred_at)
        rows = session.execute(
            sa.select(WebhookEvent.id, WebhookEvent.body, WebhookEvent.received_at)
            .where(WebhookEvent.matched.is_(False), WebhookEvent.kind == EventKind.REPLY,
                   WebhookEvent.vendor_message_id.is_(None), has_message)
            .order_by(WebhookEvent.id)
            .limit(limit - len(by_wamid))
        ).all()
        matched += sum(_apply_pending(session, eid, body, rec, None) for eid, body, rec in rows)
    return matched


def after(session: Session) -> int:
    return match_pending_events(session, window_s=WEBHOOK_MATCH_WINDOW_S)


def time_runs(sessions: Callable[[], Session], match: Callable[[Session], int], runs: int) -> tuple[list[float], int]:
    times, matched = [], 0
    for _ in range(runs):
        with sessions() as session:
            started = time.perf_counter()
            matched = match(session)
            times.append((time.perf_counter() - started) * 1000)
            session.rollback()
    return times, matched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="old unmatched events")
    parser.add_argument("--young", type=int, default=2_000, help="unmatched events inside the window")
    parser.add_argument("--matching", type=int, default=20, help="young events whose message exists")
    parser.add_argument("--messages", type=int, default=200_000, help="our sent messages, none of them matching")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    print(load_line())
    with scratch_postgres("sweep_unmatched") as url:
        engine = make_engine(url)
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(sa.text(FILL_SQL), {"tag": "other", "n": args.events, "age_s": 3 * 86400})
            conn.execute(sa.text(FILL_SQL.replace("'wamid.' || :tag || g", "'wamid.young' || g")),
                         {"tag": "young", "n": args.young, "age_s": 60})
            conn.execute(sa.text(MESSAGES_SQL), {"n": args.matching, "prefix": "wamid.young"})
            conn.execute(sa.text(MESSAGES_SQL.replace("20000000 + g", "30000000 + g")),
                         {"n": args.messages, "prefix": "wamid.ours"})
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE webhook_events"))
            conn.execute(sa.text("VACUUM ANALYZE messages"))
        print(f"filled {args.events:,} old + {args.young:,} young unmatched events ({args.matching:,} with a "
              f"message) and {args.messages:,} other sent messages in {time.perf_counter() - started:.1f} s")
        sessions = make_session_factory(engine)
        for name, match in (("before (main's query)", main_before), ("after (window + index)", after)):
            times, matched = time_runs(sessions, match, args.runs)
            print(f"{name:24s} median {statistics.median(times):8.1f} ms  max {max(times):8.1f} ms  "
                  f"matched {matched} per sweep  ({args.runs} runs)")
        engine.dispose()


if __name__ == "__main__":
    main()
