"""The import's parallel checks and set-based writes give exactly what the sequential path gives,
and a failure part way (a checking process killed, the database failing) leaves none of its rows.

Each DB-backed test runs on the real Postgres and on SQLite.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import import_pool, import_store, importer
from scheduler.campaigns import create_campaign, create_with_recipients
from scheduler.import_pool import ImportInterrupted
from scheduler.importer import Recipient, import_recipients, read_recipients
from scheduler.template import MessageTemplate
from tests.scheduler.test_import import TEMPLATE, counts, session_factory  # noqa: F401 - the fixture
from worker.contacts.service import opt_out
from worker.models import Contact, Message


def mixed_csv(path: Path, rows: int) -> Path:
    """Valid rows with invalid phones, empty variables, duplicates in three spellings, blank lines,
    a quoted cell spanning lines and a row with too many fields spread through the file."""
    lines = ["phone,name,code"]
    for i in range(rows):
        phone = f"+966 5{i:08d}"
        if i % 97 == 5:
            phone = "not-a-phone"
        elif i % 89 == 7 and i > 10:
            phone = f"00966 5{i - 3:08d}"      # duplicate of an earlier row
        elif i % 83 == 3 and i > 10:
            phone = f"9665{i - 9:08d}"          # duplicate, bare digits
        if i % 211 == 11:
            lines.append("")
        if i % 173 == 17:
            lines.append(f'{phone},"two\nlines",{i}')
        elif i % 151 == 13:
            lines.append(f"{phone},Extra,{i},surplus")
        else:
            lines.append(f"{phone},{'' if i % 131 == 1 else f'Name{i % 7}'},C{i}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def create(sf, path: Path, **kw):  # noqa: ANN001, ANN201
    return create_with_recipients(sf, path, name="parallel", phone_number_id="123456", template=TEMPLATE, **kw)


def rows_of(sf, campaign_id: int) -> list[tuple]:  # noqa: ANN001
    """The campaign's messages in id order (the order the dispatcher sends them)."""
    with sf() as session:
        return [tuple(r) for r in session.execute(
            sa.select(Message.phone, Message.content, Message.status, Message.require_open_window)
            .where(Message.campaign_id == campaign_id).order_by(Message.id))]


def report(result) -> tuple:  # noqa: ANN001
    return (result.imported, result.rejected, result.duplicates, result.opted_out,
            [(p.line, p.reason) for p in result.problems], [(p.line, p.reason) for p in result.duplicate_rows])


def test_sequential_and_parallel_paths_give_identical_reports_and_rows(session_factory, tmp_path, monkeypatch):
    # Given a file of many chunks and merge windows, with every kind of bad and duplicate row,
    # and some of its phones opted out
    monkeypatch.setattr(import_pool, "CHUNK_RECORDS", 150)
    path = mixed_csv(tmp_path / "mixed.csv", 4_000)
    with session_factory.begin() as session:
        for i in range(0, 4_000, 40):
            opt_out(session, f"9665{i:08d}", source="import")
    # When it is imported once judged in this process and once in a pool of two processes
    seq_id, sequential = _create_windowed(session_factory, path, processes=1)
    par_id, parallel = _create_windowed(session_factory, path, processes=2)
    # Then the reports and the stored rows (in id order) are the same, and they add up
    assert report(sequential) == report(parallel)
    assert rows_of(session_factory, seq_id) == rows_of(session_factory, par_id)
    assert sequential.imported + sequential.rejected + sequential.duplicates == 4_000
    assert sequential.rejected > 40 and sequential.duplicates > 40 and sequential.opted_out > 50
    # ... and they are what the one-row-at-a-time reader says: the first valid row of each phone,
    # in file order; every other valid row a duplicate; every problem with its line, in order
    first: dict[str, Recipient] = {}
    problems = []
    for item in read_recipients(path, MessageTemplate(TEMPLATE)):
        if isinstance(item, Recipient):
            first.setdefault(item.phone, item)
        else:
            problems.append((item.line, item.reason))
    assert [(r[0], r[1]) for r in rows_of(session_factory, seq_id)] == [(p, r.content) for p, r in first.items()]
    assert report(sequential)[4] == problems
    duplicate_lines = [line for line, _ in report(sequential)[5]]
    assert duplicate_lines == sorted(duplicate_lines) and len(duplicate_lines) == sequential.duplicates


def _create_windowed(sf, path: Path, *, processes: int):  # noqa: ANN001, ANN202
    """create_with_recipients with small merge windows (so duplicates cross windows)."""
    with sf.begin() as session:
        campaign_id = create_campaign(session, name="windows", phone_number_id="123456", template=TEMPLATE, draft=True).id
    return campaign_id, import_recipients(sf, campaign_id, path, batch_rows=700, processes=processes)


def test_a_second_import_into_the_campaign_finds_every_row_a_duplicate(session_factory, tmp_path):
    path = mixed_csv(tmp_path / "mixed.csv", 1_500)
    campaign_id, first = _create_windowed(session_factory, path, processes=2)
    again = import_recipients(session_factory, campaign_id, path, batch_rows=400, processes=2)
    assert (again.imported, again.rejected) == (0, first.rejected)
    assert again.duplicates == first.imported + first.duplicates
    assert len(rows_of(session_factory, campaign_id)) == first.imported


def test_a_small_file_is_judged_without_a_pool(session_factory, tmp_path, monkeypatch):
    def no_pool(*_args, **_kw):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a pool was started for a small file")

    monkeypatch.setattr(import_pool, "_in_pool", no_pool)
    _, result = create(session_factory, mixed_csv(tmp_path / "small.csv", 300))
    assert result.imported > 250


def _pool_processes() -> list[int]:
    """Pids of this process's forkserver's children: the pool's processes."""
    parents: dict[int, int] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as fh:
                parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    servers = {pid for pid, ppid in parents.items() if ppid == os.getpid()}
    return [pid for pid, ppid in parents.items() if ppid in servers]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the pool's processes in /proc")
def test_a_checking_process_killed_mid_import_fails_it_cleanly_without_partial_rows(session_factory, tmp_path, monkeypatch):
    # Given a campaign that already has recipients, and a big file being imported into it on two
    # processes, in small windows so that some are written before the kill, and slowly (each
    # window's write waits 20 ms, and the reader waits for the writer) so that the kill comes first
    monkeypatch.setattr(import_pool, "CHUNK_RECORDS", 200)
    store_class = (import_store.PostgresStore if session_factory.kw["bind"].dialect.name == "postgresql"
                   else import_store.SqliteStore)
    real_write = store_class.write
    monkeypatch.setattr(store_class, "write", lambda self, rows: time.sleep(0.02) or real_write(self, rows))
    with session_factory.begin() as session:
        campaign_id = create_campaign(session, name="killed", phone_number_id="123456", template=TEMPLATE, draft=True).id
    import_recipients(session_factory, campaign_id, mixed_csv(tmp_path / "first.csv", 50), processes=1)
    before = rows_of(session_factory, campaign_id)
    with session_factory() as session:
        contacts_before = session.scalar(sa.select(sa.func.count()).select_from(Contact))
    path = tmp_path / "big.csv"
    path.write_text("phone,name,code\n" + "".join(f"+966 57{i:07d},N,C{i}\n" for i in range(60_000)), encoding="utf-8")
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = import_recipients(session_factory, campaign_id, path, batch_rows=500, processes=2)
        except BaseException as exc:  # noqa: BLE001
            outcome["error"] = exc

    importer = threading.Thread(target=run)
    importer.start()
    # When one of the pool's processes is killed once the import is well under way
    deadline = time.monotonic() + 60
    while not (pids := _pool_processes()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pids, "the pool never started"
    if session_factory.kw["bind"].dialect.name == "sqlite":   # windows commit as they go: wait for some
        while len(rows_of(session_factory, campaign_id)) <= len(before) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(rows_of(session_factory, campaign_id)) > len(before)
    else:                                                     # one transaction: nothing shows until commit
        time.sleep(0.5)
    os.kill(pids[0], signal.SIGKILL)
    importer.join(120)
    # Then the import fails saying so, and the campaign has exactly the rows it had before
    assert isinstance(outcome.get("error"), ImportInterrupted), outcome
    assert "nothing was imported" in str(outcome["error"])
    assert rows_of(session_factory, campaign_id) == before
    with session_factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Contact)) >= contacts_before


def test_a_database_failure_part_way_leaves_none_of_the_imports_rows(session_factory, tmp_path, monkeypatch):
    # Given a write that fails on the third window
    store_class = (import_store.PostgresStore if session_factory.kw["bind"].dialect.name == "postgresql"
                   else import_store.SqliteStore)
    real_write, calls = store_class.write, []

    def failing_write(self, rows):  # noqa: ANN001, ANN202
        calls.append(len(rows))
        if len(calls) == 3:
            raise sa.exc.OperationalError("INSERT", {}, Exception("disk full"))
        return real_write(self, rows)

    monkeypatch.setattr(store_class, "write", failing_write)
    monkeypatch.setattr(importer, "BATCH_ROWS", 500)
    monkeypatch.setattr(import_pool, "CHUNK_RECORDS", 100)
    before = counts(session_factory)
    # When a campaign is created from a file of several windows
    with pytest.raises(sa.exc.OperationalError, match="disk full"):
        create(session_factory, mixed_csv(tmp_path / "mixed.csv", 3_000), processes=1)
    # Then no campaign and no message is left
    assert len(calls) == 3
    assert counts(session_factory) == before


def test_writer_windows_keep_to_the_batch_size(session_factory, tmp_path, monkeypatch):
    """Memory stays bounded: the writer is handed windows of about batch_rows rows, never the file."""
    store_class = (import_store.PostgresStore if session_factory.kw["bind"].dialect.name == "postgresql"
                   else import_store.SqliteStore)
    real_write, sizes = store_class.write, []
    monkeypatch.setattr(store_class, "write", lambda self, rows: sizes.append(len(rows)) or real_write(self, rows))
    monkeypatch.setattr(import_pool, "CHUNK_RECORDS", 100)
    _, result = _create_windowed(session_factory, mixed_csv(tmp_path / "mixed.csv", 3_000), processes=2)
    assert max(sizes) < 700 + 100 and sum(sizes) == result.imported + result.duplicates


texts = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(name=texts, code=texts)
def test_the_precompiled_json_is_json_dumps_byte_for_byte(name, code):
    template = MessageTemplate({"footer_text": "Bye {{name}}", **TEMPLATE})
    try:
        filled = template.fill({"name": name, "code": code})
    except Exception:  # noqa: BLE001 - an invalid row is rejected before it is serialised
        return
    assert template.dumps(filled) == json.dumps(filled)
    assert json.loads(template.dumps(filled)) == filled


def test_suppression_list_windows_first_reason_wins_one_event_per_change(session_factory, tmp_path):
    """contacts import --optouts, set-based per window: each phone opted out once with its first
    row's reason and one contact_events row; repeats (in a window or a later one) and phones
    opted out before count as already opted out and keep what they had."""
    from tests.conftest import make_runtime, stack_env
    from worker.contacts.importer import import_optouts
    from worker.models import ContactEvent

    base = 966560000000 + (hash(str(tmp_path)) % 10_000) * 100
    earlier = str(base)
    with session_factory.begin() as session:
        opt_out(session, earlier, source="keyword", reason="replied STOP")
    lines = ["phone,reason", f"{earlier},crm"]
    lines += [f"+{base + i},first {i}" for i in range(1, 30)]
    lines += [f"00{base + 3},second", "not-a-phone,x", f"{base + 20},", f"{base + 30},"]
    path = tmp_path / "optouts.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    url = session_factory.kw["bind"].url.render_as_string(hide_password=False)
    rt = make_runtime(stack_env(database_url=url, sandbox_url="http://127.0.0.1:9"))   # the same database
    try:
        result = import_optouts(rt, path, batch_rows=7)
    finally:
        rt.close()
    assert (result.opted_out, result.already_opted_out, result.rejected) == (30, 3, 1)
    assert result.problems[0].startswith("line 33:")
    phones = [str(base + i) for i in range(31)]
    with session_factory() as session:
        rows = {c.phone: c for c in session.scalars(sa.select(Contact).where(Contact.phone.in_(phones)))}
        events = session.execute(sa.select(ContactEvent.phone, ContactEvent.source, ContactEvent.reason)
                                 .where(ContactEvent.phone.in_(phones))).all()
    assert all(rows[p].opted_out_at is not None for p in phones)
    assert (rows[earlier].opt_out_source, rows[earlier].opt_out_note) == ("keyword", "replied STOP")
    assert (rows[str(base + 3)].opt_out_note, rows[str(base + 30)].opt_out_note) == ("first 3", None)
    imported = sorted((p, r) for p, s, r in events if s == "import")
    assert imported == sorted([(str(base + i), f"first {i}") for i in range(1, 30)] + [(str(base + 30), None)])
