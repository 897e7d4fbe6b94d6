"""Import a suppression list: a CSV of phones that opted out elsewhere (source `import`).

The CSV has a `phone` column and optionally a `reason` (or `note`) column. It is streamed in
batches (one transaction each), so a file of millions of rows stays in bounded memory; each batch
is one INSERT of unknown contacts and one UPDATE ... RETURNING that opts out those not yet opted
out (their reasons follow in one executemany), so every change gets its contact_events row and the report can tell
new opt-outs from phones already opted out. A phone that is invalid is reported with its line
(header = line 1), like the campaign import's report.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from worker.contacts import OPT_OUT, REASON_MAX_CHARS, SOURCE_IMPORT, ensure_contacts
from worker.errors import ButtoncastError, MessageInvalid
from worker.message import normalize_phone
from worker.models import Contact, ContactEvent, utcnow

BATCH_ROWS = 2_000
MAX_DETAILS = 1_000
PHONE_COLUMN = "phone"
REASON_COLUMNS = ("reason", "note")


class OptOutFileError(ButtoncastError):
    """The file as a whole cannot be used (no phone column, not UTF-8, broken CSV)."""


@dataclass
class OptOutImportResult:
    opted_out: int = 0           # newly opted out by this import
    already_opted_out: int = 0   # were opted out before (or twice in the file)
    rejected: int = 0
    problems: list[str] = field(default_factory=list)

    def reject(self, line: int, reason: str) -> None:
        self.rejected += 1
        if len(self.problems) < MAX_DETAILS:
            self.problems.append(f"line {line}: {reason}")


def _rows(path: str, result: OptOutImportResult, default_region: str | None) -> Iterator[tuple[str, str | None]]:
    with open(path, encoding="utf-8-sig", newline="") as stream:
        reader = csv.reader(stream)
        try:
            header = [c.strip().lower() for c in next(reader, None) or []]
            if PHONE_COLUMN not in header:
                raise OptOutFileError(f"{path}: the header (line 1) has no {PHONE_COLUMN!r} column")
            phone_at = header.index(PHONE_COLUMN)
            reason_at = next((header.index(c) for c in REASON_COLUMNS if c in header), None)
            start = reader.line_num + 1
            for cells in reader:
                line, start = start, reader.line_num + 1
                if not any(c.strip() for c in cells):
                    continue
                try:
                    phone = normalize_phone(cells[phone_at] if phone_at < len(cells) else "", default_region=default_region)
                except MessageInvalid as exc:
                    result.reject(line, str(exc))
                    continue
                reason = cells[reason_at].strip() if reason_at is not None and reason_at < len(cells) else ""
                yield phone, reason[:REASON_MAX_CHARS] or None
        except UnicodeDecodeError as exc:
            raise OptOutFileError(f"{path}: not UTF-8 text after line {reader.line_num} ({exc.reason})") from None
        except csv.Error as exc:
            raise OptOutFileError(f"{path}: line {reader.line_num}: {exc}") from None


def _opt_out_batch(session: Session, batch: dict[str, str | None], *, actor: str | None) -> int:
    """Opt out every phone of the batch not yet opted out; returns how many changed."""
    now = utcnow()
    ensure_contacts(session, batch, at=now)
    changed = session.execute(
        sa.update(Contact)
        .where(Contact.phone.in_(list(batch)), Contact.opted_out_at.is_(None))
        .values(opted_out_at=now, opt_out_source=SOURCE_IMPORT, opt_out_note=None, updated_at=now)
        .returning(Contact.phone)
        .execution_options(synchronize_session=False)
    ).scalars().all()
    notes = [{"p_phone": p, "p_note": batch[p]} for p in changed if batch[p]]
    if notes:   # the file's reasons, on the rows this batch opted out
        session.connection().execute(
            sa.update(Contact).where(Contact.phone == sa.bindparam("p_phone")).values(opt_out_note=sa.bindparam("p_note")),
            notes)
    if changed:
        session.execute(sa.insert(ContactEvent), [
            {"phone": p, "at": now, "action": OPT_OUT, "source": SOURCE_IMPORT, "reason": batch[p], "actor": actor}
            for p in changed
        ])
    return len(changed)


def import_optouts(session_factory: sessionmaker[Session], path: str | os.PathLike[str], *,
                   actor: str | None = "operator", batch_rows: int = BATCH_ROWS,
                   default_region: str | None = None) -> OptOutImportResult:
    """Opt out every valid phone of the file (source `import`); returns the counts and problems.
    `default_region` (DEFAULT_COUNTRY_CODE) reads national numbers written with a trunk 0."""
    result = OptOutImportResult()
    batch: dict[str, str | None] = {}
    seen_in_batch = 0

    def flush() -> None:
        nonlocal batch, seen_in_batch
        if batch:
            with session_factory.begin() as session:
                changed = _opt_out_batch(session, batch, actor=actor)
            result.opted_out += changed
            result.already_opted_out += seen_in_batch - changed
        batch, seen_in_batch = {}, 0

    for phone, reason in _rows(os.fspath(path), result, default_region):
        batch.setdefault(phone, reason)   # the first row of a phone wins
        seen_in_batch += 1
        if len(batch) >= batch_rows:
            flush()
    flush()
    return result
