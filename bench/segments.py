"""Segments at scale: counts and resolution on Postgres with 1,000,000 contacts and 10,000,000 messages.

    .venv/bin/python bench/segments.py [--contacts 1000000] [--campaigns 10] [--runs 5]

A scratch Postgres database (dropped after) gets `--contacts` contacts with attributes (name, city
out of 10, plan out of 3), 5 % tagged `vip`, 1 % opted out, and `--campaigns` sent campaigns with one
message per contact (so 10 x 1,000,000 message rows), 10 % of them read and 4 % tapped (`reserve`
or `later`). Then, each figure beside a baseline measured in the same run:

- counts (median of `--runs`), goal < 500 ms each: the baseline is a plain `count(*)` of the
  contacts; then an attribute rule (city is Riyadh), a tag rule, a `tapped` rule on one campaign
  (button reserve), and a combination (all of: city in 2 values, tapped any button, not read
  another campaign). With the plan of each (EXPLAIN), so the indexes used are on the page.
- resolution, goal >= 0.8x: a campaign on the segment "plan exists" (every contact not opted out)
  with a `{{name}}` placeholder resolved into messages (`scheduler.audience.resolve`), against a
  CSV import of the same phones and names (`create_with_recipients`, the import's own pool) into
  another campaign of the same database. Rows per second each, and the ratio. Then the same with a
  message without placeholders (the resolution's set-based path).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_line, scratch_postgres  # noqa: E402
from scheduler import audience  # noqa: E402
from scheduler.campaigns import create_campaign, create_with_recipients  # noqa: E402
from worker.contacts import segments  # noqa: E402
from worker.db import make_engine, make_session_factory  # noqa: E402
from worker.models import Segment, utcnow  # noqa: E402

GOAL_COUNT_MS = 500.0
GOAL_RESOLVE_RATIO = 0.8
CITIES = ("Riyadh", "Jeddah", "Dammam", "Mecca", "Medina", "Tabuk", "Abha", "Hail", "Najran", "Jizan")
BUTTONS = [{"id": "reserve", "title": "Reserve"}, {"id": "later", "title": "Later"}]
NAMED = {"body_text": "Hello {{name}}, see you in {{city}}", "buttons": BUTTONS}
PLAIN = {"body_text": "Spring sale this weekend", "buttons": BUTTONS}
PHONE0 = 966_500_000_000


def populate(url: str, contacts: int, campaigns: int) -> list[int]:
    engine = sa.create_engine(url)
    now = "now() at time zone 'utc'"
    city = "(ARRAY[" + ",".join(f"'{c}'" for c in CITIES) + "])[1 + g % 10]"
    with engine.begin() as conn:
        t = time.perf_counter()
        conn.execute(sa.text(
            f"INSERT INTO contacts (phone, first_seen_at, updated_at, last_sent_at, opted_out_at, attributes)"
            f" SELECT ({PHONE0} + g)::text, {now}, {now}, {now} - (g % 30) * interval '1 day',"
            f" CASE WHEN g % 100 = 0 THEN {now} END,"
            f" jsonb_build_object('name', 'n' || g, 'city', {city}, 'plan', (ARRAY['free','pro','team'])[1 + g % 3])"
            f" FROM generate_series(1, :n) AS g"), {"n": contacts})
        conn.execute(sa.text(f"INSERT INTO contact_tags (phone, tag) SELECT ({PHONE0} + g)::text, 'vip'"
                             f" FROM generate_series(1, :n) AS g WHERE g % 20 = 0"), {"n": contacts})
        print(f"  {contacts:,} contacts in {time.perf_counter() - t:.1f} s", flush=True)
        ids = []
        for i in range(campaigns):
            cid = conn.execute(sa.text(
                "INSERT INTO campaigns (name, phone_number_id, template, status, scheduled_at, consecutive_failures,"
                " recipients_imported, rows_rejected, created_at, started_at, finished_at, updated_at)"
                f" VALUES (:name, '123456', CAST(:t AS json), 'completed', {now}, 0, :n, 0, {now}, {now}, {now}, {now})"
                " RETURNING id"), {"name": f"sent {i}", "t": '{"body_text": "x", "buttons": [{"id": "reserve", '
                                   '"title": "Reserve"}, {"id": "later", "title": "Later"}]}', "n": contacts}).scalar_one()
            t = time.perf_counter()
            conn.execute(sa.text(
                "INSERT INTO messages (campaign_id, phone_number_id, phone, content, status, attempts, created_at,"
                " updated_at, sent_at, delivered_at, read_at, replied_at, reply_button_id)"
                f" SELECT :c, '123456', ({PHONE0} + g)::text, '{{}}'::json, 'sent', 1, {now}, {now}, {now}, {now},"
                f" CASE WHEN (g + :c) % 10 = 0 THEN {now} END,"
                f" CASE WHEN (g + :c) % 25 = 0 THEN {now} END,"
                f" CASE WHEN (g + :c) % 50 = 0 THEN 'reserve' WHEN (g + :c) % 25 = 0 THEN 'later' END"
                " FROM generate_series(1, :n) AS g"), {"c": cid, "n": contacts})
            ids.append(cid)
            print(f"  campaign {cid}: {contacts:,} messages in {time.perf_counter() - t:.1f} s", flush=True)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE contacts"))
        conn.execute(sa.text("VACUUM ANALYZE contact_tags"))
        conn.execute(sa.text("VACUUM ANALYZE messages"))
    engine.dispose()
    return ids


def timed_ms(fn, runs: int) -> float:  # noqa: ANN001
    fn()   # warm the cache: every figure is warm, the baseline's too
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def plan(session, rules: dict) -> str:  # noqa: ANN001
    from worker.contacts.rules import condition
    from worker.models import Contact

    query = sa.select(sa.func.count()).select_from(Contact).where(Contact.opted_out_at.is_(None),
                                                                  condition(session, rules, now=utcnow()))
    sql = str(query.compile(session.get_bind(), compile_kwargs={"literal_binds": True}))
    lines = session.execute(sa.text("EXPLAIN " + sql)).scalars().all()
    return "\n".join("      " + line for line in lines if "Scan" in line or "Join" in line)


def counts(url: str, campaigns: list[int], runs: int) -> None:
    engine = make_engine(url)
    sf = make_session_factory(engine)
    a, b = campaigns[0], campaigns[-1]
    rules = {
        "attribute (city is Riyadh)": {"attribute": "city", "equals": "Riyadh"},
        "tag (vip)": {"tag": "vip"},
        f"tapped (campaign {a}, reserve)": {"tapped": {"campaign": a, "button": "reserve"}},
        "combination": {"all": [{"attribute": "city", "in": ["Riyadh", "Medina"]}, {"tapped": {"campaign": a}},
                                {"not": {"read": {"campaign": b}}}]},
    }
    with sf() as session:
        base = timed_ms(lambda: session.scalar(sa.text("SELECT count(*) FROM contacts")), runs)
        print(f"  baseline count(*) of the contacts: {base:7.1f} ms")
        for label, r in rules.items():
            n = segments.count(session, r)
            ms = timed_ms(lambda r=r: segments.count(session, r), runs)
            verdict = "ok" if ms < GOAL_COUNT_MS else "OVER"
            print(f"  {label:<34} {ms:7.1f} ms ({ms / base:4.2f}x the baseline), {n:,} members  [{verdict}: goal < {GOAL_COUNT_MS:.0f} ms]")
            print(plan(session, r))
    engine.dispose()


def resolution(url: str) -> None:
    engine = make_engine(url)
    sf = make_session_factory(engine)
    members_rules = {"attribute": "plan", "exists": True}
    with sf.begin() as session:
        session.add(Segment(name="everyone", rules=members_rules, created_at=utcnow(), updated_at=utcnow()))
    with sf() as session:
        seg_id = session.scalar(sa.select(Segment.id).where(Segment.name == "everyone"))
        total = segments.count(session, members_rules)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "members.csv"
        with sf() as session, open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["phone", "name", "city"])
            for phone, attributes in session.execute(segments.members(session, members_rules)).yield_per(10_000):
                writer.writerow([phone, attributes["name"], attributes["city"]])
        print(f"  {load_line()}")
        t = time.perf_counter()
        _, result = create_with_recipients(sf, path, name="csv baseline", phone_number_id="123456", template=NAMED)
        csv_s = time.perf_counter() - t
    csv_rate = result.imported / csv_s
    print(f"  baseline: CSV import of the same {result.imported:,} rows: {csv_s:6.1f} s, {csv_rate:,.0f} rows/s")
    for label, template in (("{{name}} filled per member", NAMED), ("no placeholder (set-based)", PLAIN)):
        with sf.begin() as session:
            c = create_campaign(session, name=label, phone_number_id="123456", template=template, draft=True)
            c.audience, c.segment_id = {"segment": seg_id}, seg_id
            cid = c.id
        print(f"  {load_line()}")
        t = time.perf_counter()
        assert audience.resolve(sf, cid)
        took = time.perf_counter() - t
        rate = total / took
        ratio = rate / csv_rate
        verdict = "ok" if ratio >= GOAL_RESOLVE_RATIO else "UNDER"
        print(f"  resolution, {label:<27} {took:6.1f} s, {rate:,.0f} members/s, {ratio:4.2f}x the CSV import"
              f"  [{verdict}: goal >= {GOAL_RESOLVE_RATIO}x]")
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--campaigns", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"segments bench: {args.contacts:,} contacts, {args.campaigns} x {args.contacts:,} messages; {load_line()}")
    with scratch_postgres("bench_segments") as url:
        ids = populate(url, args.contacts, args.campaigns)
        print(f"counts (median of {args.runs}, warm); {load_line()}")
        counts(url, ids, args.runs)
        print("resolution")
        resolution(url)
    print(f"done; {load_line()}")


if __name__ == "__main__":
    main()
