"""Contacts' attributes (what a marketer knows of a person: name, city, plan) and tags (`vip`).

Attributes are text values by name on the contact row (JSON on SQLite, JSONB on Postgres); a tag
is a `contact_tags` row. They are written by:
- `import_attributes` (`buttoncast contacts import --attributes FILE`): a UTF-8 CSV with a `phone`
  column, one column per attribute and optionally a `tags` column (`;`-separated);
- `store_campaign_attributes`: the same import of a campaign's recipients CSV (`campaign create`);
- `edit_contact` (`set_attributes`, `set_tags`): one contact, by a person or an API key (audited).
Segments select by them and campaigns from a segment fill `{{placeholders}}` from `attributes_for`.

The rules, the same for every face:
- an attribute name is 1-64 ASCII letters, digits and `_`, not starting with a digit (it becomes
  a `{{placeholder}}`), kept as written (`City` and `city` are two attributes, as two columns
  are two placeholders); `phone` and `tags` (any case) are columns, never attribute names;
- a value is text, trimmed, at most ATTRIBUTE_VALUE_MAX_CHARS; a contact keeps at most
  ATTRIBUTES_MAX attributes;
- a tag is trimmed, its inner whitespace collapsed and lower-cased (`VIP ` is `vip`), 1-64
  characters, without `;` (the CSV's separator) or control characters; at most TAGS_MAX a contact;
- an import MERGES: a non-empty cell overwrites that attribute, an empty cell leaves it as it was,
  and a tags cell adds tags; an import never removes anything. An edit removes an attribute set to
  null or "" and the tags it is told to remove. Nothing here ever changes opt-out state.

The import streams the file in windows of BATCH_ROWS rows, one transaction each, as the opt-out
import (worker.contacts.importer) does: the window's valid rows (a phone repeated in a window is
merged in line order) go into a TEMP staging table (COPY on Postgres, one executemany on SQLite)
and are applied set-based: new phones become contacts, attributes merge in SQL (`||` on JSONB,
`json_patch` on SQLite) and tags are inserted with ON CONFLICT DO NOTHING. A row that is invalid
(phone, a value too long, a bad tag) or would give its contact too many attributes or tags is
rejected with its line (header = line 1); its neighbours are kept.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from worker.audit import record_audit
from worker.errors import ButtoncastError, FieldProblem, MessageInvalid
from worker.models import Contact, ContactTag, Message, UTCDateTime, utcnow
from worker.phone import judge_phone
from worker.runtime import Runtime

BATCH_ROWS = 20_000
MAX_DETAILS = 1_000
PHONE_COLUMN, TAGS_COLUMN = "phone", "tags"
TAG_SEPARATOR = ";"
ATTRIBUTE_NAME_MAX_CHARS = 64
ATTRIBUTE_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,%d}" % (ATTRIBUTE_NAME_MAX_CHARS - 1))
ATTRIBUTE_VALUE_MAX_CHARS = 1024
ATTRIBUTES_MAX = 100
TAG_MAX_CHARS = 64
TAGS_MAX = 50
NAME_RULE = (f"an attribute name is 1-{ATTRIBUTE_NAME_MAX_CHARS} ASCII letters, digits and _, "
             "not starting with a digit")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: phones per IN (...) of the batch readers (SQLite's bound-parameter limit)
READ_CHUNK = 500


class AttributeFileError(ButtoncastError):
    """The file as a whole cannot be used (no phone column, a bad or repeated column name, too many
    columns, not UTF-8, broken CSV)."""


@dataclass
class AttributeImportResult:
    rows: int = 0                # valid rows applied
    contacts: int = 0            # contacts the rows reached (a phone repeated in one window counts once)
    created: int = 0             # of which new contacts
    tags_added: int = 0          # (contact, tag) pairs that were not there before
    rejected: int = 0
    problems: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)          # the attribute columns read
    skipped_columns: list[str] = field(default_factory=list)  # columns not stored, with why (campaign files)

    def reject(self, line: int, reason: str) -> None:
        self.rejected += 1
        if len(self.problems) < MAX_DETAILS:
            self.problems.append(f"line {line}: {reason}")


# --- the rules -----------------------------------------------------------------------------------

def attribute_name_problem(name: Any) -> str | None:
    """Why `name` cannot be an attribute's name (None when it can)."""
    if not isinstance(name, str) or not ATTRIBUTE_NAME_RE.fullmatch(name):
        return f"is not a valid attribute name: {NAME_RULE}"
    if name.lower() in (PHONE_COLUMN, TAGS_COLUMN):
        return f"is not a valid attribute name: {name.lower()!r} is a column of its own"
    return None


def _value_problem(value: str) -> str | None:
    if len(value) > ATTRIBUTE_VALUE_MAX_CHARS:
        return f"is {len(value):,} characters; the limit is {ATTRIBUTE_VALUE_MAX_CHARS:,}"
    if "\x00" in value:
        return "has a NUL character"   # no text column (nor Postgres' JSONB) can hold it
    return None if _is_unicode(value) else "is not valid Unicode text (a lone surrogate)"


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def normalize_tag(raw: Any) -> tuple[str | None, str | None]:
    """(the tag as stored, None) or (None, why it is not a tag): trimmed, whitespace collapsed, lower-cased."""
    if not isinstance(raw, str):
        return None, "must be a string"
    tag = " ".join(raw.split()).lower()
    if not tag:
        return None, "is empty"
    if len(tag) > TAG_MAX_CHARS:
        return None, f"{tag[:20]!r}… is {len(tag)} characters; the limit is {TAG_MAX_CHARS}"
    if TAG_SEPARATOR in tag or _CONTROL.search(tag) or not _is_unicode(tag):
        return None, f"{tag!r} has a {TAG_SEPARATOR!r}, a control character or is not valid Unicode text"
    return tag, None


def _split_tags(cell: str) -> tuple[list[str], str | None]:
    tags: dict[str, None] = {}
    for part in cell.split(TAG_SEPARATOR):
        if not part.strip():
            continue
        tag, problem = normalize_tag(part)
        if problem is not None:
            return [], f"{TAGS_COLUMN}: {problem}"
        tags[tag] = None  # type: ignore[index]
    if len(tags) > TAGS_MAX:
        return [], f"{TAGS_COLUMN}: {len(tags)} tags; a contact keeps at most {TAGS_MAX}"
    return list(tags), None


# --- the CSV --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Layout:
    width: int
    phone_at: int
    tags_at: int | None
    attributes: tuple[tuple[str, int], ...]


def _layout(header: list[str], path: str, result: AttributeImportResult, *, skip_bad_columns: bool) -> _Layout:
    columns = [c.strip().lstrip("\ufeff").strip() for c in header]
    lowered = [c.lower() for c in columns]
    if PHONE_COLUMN not in lowered:
        raise AttributeFileError(f"{path}: the header (line 1) has no {PHONE_COLUMN!r} column; it has: "
                                 f"{', '.join(map(repr, columns)) or 'nothing'}")
    lowered_seen, columns_seen = Counter(lowered), Counter(columns)   # linear: a wide header is no quadratic scan
    repeated = sorted({c for c in (PHONE_COLUMN, TAGS_COLUMN) if lowered_seen[c] > 1}
                      | {c for c, n in columns_seen.items() if c and n > 1})
    if repeated:
        raise AttributeFileError(f"{path}: column(s) {', '.join(map(repr, repeated))} appear more than once in the header (line 1)")
    attributes: list[tuple[str, int]] = []
    for index, name in enumerate(columns):
        if not name or name.lower() in (PHONE_COLUMN, TAGS_COLUMN):
            continue   # a column without a name (a trailing comma) holds nothing to keep
        problem = attribute_name_problem(name)
        if problem is None:
            attributes.append((name, index))
        elif skip_bad_columns:
            result.skipped_columns.append(f"{name!r} {problem}")
        else:
            raise AttributeFileError(f"{path}: the header (line 1): column {name!r} {problem}")
    if len(attributes) > ATTRIBUTES_MAX:
        raise AttributeFileError(f"{path}: the header (line 1) has {len(attributes)} attribute columns; "
                                 f"a contact keeps at most {ATTRIBUTES_MAX}")
    result.columns = [n for n, _ in attributes]
    tags_at = lowered.index(TAGS_COLUMN) if TAGS_COLUMN in lowered else None
    return _Layout(len(columns), lowered.index(PHONE_COLUMN), tags_at, tuple(attributes))


#: one valid row: (line, phone, attributes, tags)
_Row = tuple[int, str, dict[str, str], list[str]]


#: a phone written as E.164 ("+966 50-123 4567"): its digits are its normalised form when valid
_E164_RE = re.compile(r"\+[1-9][0-9]{6,14}")
_E164_FILLERS = str.maketrans("", "", " -.\u00a0")
#: rows read ahead to ask, in one query, which of their phones a campaign already judged valid
KNOWN_WINDOW = 5_000


def _e164_digits(raw: str) -> str | None:
    compact = raw.strip().translate(_E164_FILLERS)
    return compact[1:] if _E164_RE.fullmatch(compact) else None


def _judge(cells: list[str], line: int, layout: _Layout, default_region: str | None, *,
           skip_bad_phones: bool = False, known: frozenset[str] | set[str] = frozenset()) -> _Row | str | None:
    """One row -> its phone, attributes and tags, or the reason it is rejected (None: a bad phone
    skipped quietly, for a campaign whose own import reported it). `known`: normalised phones
    already judged valid (a campaign's recipients, just imported from this file): a phone written
    as E.164 whose digits are among them is not judged again (libphonenumber was 80 % of the time)."""
    if len(cells) > layout.width and any(c.strip() for c in cells[layout.width:]):
        return f"has {len(cells)} fields; the header has {layout.width}"
    raw = cells[layout.phone_at] if layout.phone_at < len(cells) else ""
    digits = _e164_digits(raw) if known else None
    if digits is not None and digits in known:
        phone, problem = digits, None   # "+" and these digits is a valid E.164 number: judge_phone would give the same
    else:
        phone, problem = judge_phone(raw, default_region=default_region)
    if problem is not None:
        return None if skip_bad_phones else str(problem)
    attributes: dict[str, str] = {}
    for name, index in layout.attributes:
        value = cells[index].strip() if index < len(cells) else ""
        if value:
            too_long = _value_problem(value)
            if too_long:
                return f"{name}: {too_long}"
            attributes[name] = value
    tags: list[str] = []
    if layout.tags_at is not None and layout.tags_at < len(cells):
        tags, problem_text = _split_tags(cells[layout.tags_at])
        if problem_text:
            return problem_text
    return line, phone, attributes, tags  # type: ignore[return-value]


def _rows(path: str, result: AttributeImportResult, default_region: str | None, *,
          skip_bad_columns: bool, skip_bad_phones: bool,
          known_phones: Callable[[list[str]], set[str]] | None = None) -> Iterator[_Row]:
    """The file's valid rows. `known_phones(digits) -> the valid ones among them` (see _judge) is
    asked once per KNOWN_WINDOW rows."""
    with open(path, encoding="utf-8-sig", newline="") as stream:
        reader = csv.reader(stream)
        try:
            layout = _layout(next(reader, None) or [], path, result, skip_bad_columns=skip_bad_columns)
            for records in _windows(reader, KNOWN_WINDOW if known_phones else 1):
                known: set[str] = set()
                if known_phones is not None:
                    digits = [_e164_digits(cells[layout.phone_at]) if layout.phone_at < len(cells) else None
                              for _, cells in records]
                    known = known_phones([d for d in digits if d])
                for line, cells in records:
                    judged = _judge(cells, line, layout, default_region, skip_bad_phones=skip_bad_phones, known=known)
                    if isinstance(judged, str):
                        result.reject(line, judged)
                    elif judged is not None:
                        yield judged
        except UnicodeDecodeError as exc:
            raise AttributeFileError(f"{path}: not UTF-8 text after line {reader.line_num} ({exc.reason})") from None
        except csv.Error as exc:
            raise AttributeFileError(f"{path}: line {reader.line_num}: {exc}") from None


def _windows(reader: Any, size: int) -> Iterator[list[tuple[int, list[str]]]]:
    """(line, cells) of the non-blank records, `size` at a time (line: where the record starts)."""
    records: list[tuple[int, list[str]]] = []
    start = reader.line_num + 1
    for cells in reader:
        line, start = start, reader.line_num + 1
        if any(c.strip() for c in cells):
            records.append((line, cells))
            if len(records) >= size:
                yield records
                records = []
    if records:
        yield records


# --- one window, set-based ------------------------------------------------------------------------

_CREATED = "SELECT count(*) FROM attribute_staging s WHERE NOT EXISTS (SELECT 1 FROM contacts c WHERE c.phone = s.phone)"
_DELETE_LINE = "DELETE FROM attribute_staging WHERE line = :line"
# The staged rows that would give their contact too many attributes or tags: (line, attributes, tags).
# Set-based (one join and one aggregate each); a new contact holds only the file's columns (at most
# ATTRIBUTES_MAX, checked at the header), so only existing contacts are counted for attributes.
_OVER = """
SELECT line, max(n_attributes), max(n_tags) FROM (
    SELECT s.line, count(*) AS n_attributes, 0 AS n_tags
    FROM attribute_staging s JOIN contacts c ON c.phone = s.phone CROSS JOIN {keys}
    WHERE s.attrs <> {no_attrs} GROUP BY s.line HAVING count(*) > :attributes_max
    UNION ALL
    SELECT line, 0, count(*) FROM (
        SELECT s.line, j.value AS tag FROM attribute_staging s CROSS JOIN {tags} WHERE s.tags <> {no_tags}
        UNION SELECT s.line, t.tag FROM attribute_staging s JOIN contact_tags t ON t.phone = s.phone WHERE s.tags <> {no_tags}
    ) u GROUP BY line HAVING count(*) > :tags_max
) o GROUP BY line
"""
_SQL = {
    "postgresql": {
        "staging": ("CREATE TEMP TABLE IF NOT EXISTS attribute_staging "
                    "(line integer NOT NULL, phone text NOT NULL, attrs jsonb NOT NULL, tags jsonb NOT NULL)",),
        "over": _OVER.format(keys="jsonb_object_keys(c.attributes || s.attrs) AS k", no_attrs="'{}'::jsonb",
                             tags="jsonb_array_elements_text(s.tags) AS j(value)", no_tags="'[]'::jsonb"),
        # a contact whose attributes already hold every staged value is not rewritten
        "upsert": """
INSERT INTO contacts (phone, first_seen_at, updated_at, attributes)
SELECT phone, :now, :now, attrs FROM attribute_staging
ON CONFLICT (phone) DO UPDATE SET attributes = contacts.attributes || EXCLUDED.attributes, updated_at = EXCLUDED.updated_at
WHERE NOT contacts.attributes @> EXCLUDED.attributes
""",
        "tags": """
INSERT INTO contact_tags (phone, tag)
SELECT s.phone, t.tag FROM attribute_staging s CROSS JOIN LATERAL jsonb_array_elements_text(s.tags) AS t(tag)
ON CONFLICT DO NOTHING
""",
    },
    "sqlite": {
        "staging": ("CREATE TEMP TABLE IF NOT EXISTS attribute_staging "
                    "(line INTEGER PRIMARY KEY, phone TEXT NOT NULL, attrs TEXT NOT NULL, tags TEXT NOT NULL)",),
        "over": _OVER.format(keys="json_each(json_patch(c.attributes, s.attrs)) AS k", no_attrs="'{}'",
                             tags="json_each(s.tags) AS j", no_tags="'[]'"),
        "upsert": """
INSERT INTO contacts (phone, first_seen_at, updated_at, attributes)
SELECT phone, :now, :now, attrs FROM attribute_staging WHERE true
ON CONFLICT (phone) DO UPDATE SET attributes = json_patch(coalesce(contacts.attributes, '{}'), excluded.attributes),
    updated_at = excluded.updated_at
WHERE json_patch(coalesce(contacts.attributes, '{}'), excluded.attributes) IS NOT contacts.attributes
""",
        "tags": """
INSERT INTO contact_tags (phone, tag)
SELECT s.phone, j.value FROM attribute_staging s, json_each(s.tags) j WHERE true
ON CONFLICT DO NOTHING
""",
    },
}


def _statement(sql: str) -> sa.TextClause:
    return sa.text(sql).bindparams(sa.bindparam("now", type_=UTCDateTime()))


def _merged(window: Sequence[_Row]) -> dict[str, _Row]:
    """A phone's rows of one window as one (its first line; later values win; tags add up)."""
    merged: dict[str, _Row] = {}
    for line, phone, attributes, tags in window:
        if phone in merged:
            first = merged[phone]
            first[2].update(attributes)
            first[3].extend(t for t in tags if t not in first[3])
        else:
            merged[phone] = (line, phone, dict(attributes), list(tags))
    return merged


def _stage(connection: sa.Connection, staged: list[tuple[int, str, str, str]]) -> None:
    """The window's rows into the TEMP staging table (COPY on Postgres, one executemany on SQLite)."""
    for statement in _SQL[connection.dialect.name]["staging"]:
        connection.exec_driver_sql(statement)
    driver = connection.connection.driver_connection
    if connection.dialect.name == "postgresql":
        # JIT compiling these short set-based statements costs more than running them (~1 s a
        # window); a temp table has no statistics until analysed, and without them the limit
        # checks scan every contact instead of probing the primary key
        connection.exec_driver_sql("SET LOCAL jit = off")
        with driver.cursor() as cursor, cursor.copy("COPY attribute_staging (line, phone, attrs, tags) FROM STDIN") as copy:
            for row in staged:
                copy.write_row(row)
        connection.exec_driver_sql("ANALYZE attribute_staging")
    else:
        driver.executemany("INSERT INTO attribute_staging (line, phone, attrs, tags) VALUES (?, ?, ?, ?)", staged)


def _reject_over_limits(connection: sa.Connection, window: Sequence[_Row], merged: dict[str, _Row],
                        result: AttributeImportResult) -> int:
    """Unstage each contact the window would take past ATTRIBUTES_MAX or TAGS_MAX, rejecting every
    row of it in the window with its own line; returns how many contacts that was."""
    over = connection.execute(sa.text(_SQL[connection.dialect.name]["over"]),
                              {"attributes_max": ATTRIBUTES_MAX, "tags_max": TAGS_MAX}).all()
    if not over:
        return 0
    phone_at = {line: phone for line, phone, _, _ in merged.values()}
    reasons = {phone_at[line]: (f"would give the contact {n_attributes} attributes; a contact keeps at most {ATTRIBUTES_MAX}"
                                if n_attributes > ATTRIBUTES_MAX else
                                f"would give the contact {n_tags} tags; a contact keeps at most {TAGS_MAX}")
               for line, n_attributes, n_tags in over}
    for line, phone, _, _ in window:
        if phone in reasons:
            result.reject(line, reasons[phone])
    connection.execute(sa.text(_DELETE_LINE), [{"line": line} for line, _, _ in over])
    return len(over)


def _apply_window(connection: sa.Connection, window: Sequence[_Row], result: AttributeImportResult, *,
                  actor: str | None, source: str) -> None:
    """Stage the window's rows and apply them set-based, in one transaction."""
    merged = _merged(window)
    sql = _SQL[connection.dialect.name]
    rejected_before = result.rejected
    with connection.begin():
        _stage(connection, [(line, phone, json.dumps(attrs, ensure_ascii=False), json.dumps(tags, ensure_ascii=False))
                            for line, phone, attrs, tags in merged.values()])
        contacts = len(merged) - _reject_over_limits(connection, window, merged, result)
        rows = len(window) - (result.rejected - rejected_before)
        created = connection.execute(sa.text(_CREATED)).scalar_one()
        connection.execute(_statement(sql["upsert"]), {"now": utcnow()})
        tags_added = max(connection.execute(sa.text(sql["tags"])).rowcount, 0)
        connection.exec_driver_sql("DELETE FROM attribute_staging")
        if actor is not None and contacts:
            with Session(bind=connection) as session:   # joins this transaction
                record_audit(session, actor[:200], "contacts.attributes_imported", "contact", None, source=source,
                             lines=[window[0][0], window[-1][0]], rows=rows, contacts=contacts, created=created,
                             tags_added=tags_added, columns=result.columns)
                session.flush()
    result.rows += rows
    result.contacts += contacts
    result.created += created
    result.tags_added += tags_added


def import_attributes(rt: Runtime, path: str | os.PathLike[str], *, actor: str | None = "operator",
                      default_region: str | None = None, batch_rows: int = BATCH_ROWS,
                      skip_bad_columns: bool = False, skip_bad_phones: bool = False,
                      known_phones: Callable[[list[str]], set[str]] | None = None) -> AttributeImportResult:
    """Upsert contacts from a CSV (`phone`, attribute columns, optionally `tags`): merge their
    attributes and add their tags, never touching opt-out state. Returns counts and the rejected
    rows with their lines. AttributeFileError for a file that cannot be used as a whole.
    A campaign's CSV, whose columns were chosen for its placeholders and whose bad phones its own
    import reports: `skip_bad_columns` skips (and lists) a column whose name cannot be an
    attribute rather than refusing the file; `skip_bad_phones` passes over a row with a bad phone
    without reporting it."""
    result = AttributeImportResult()
    name = os.fspath(path)
    window: list[_Row] = []
    engine: sa.Engine = rt.session_factory.kw["bind"]
    with engine.connect() as connection:
        def flush() -> None:
            if window:
                _apply_window(connection, window, result, actor=actor, source=os.path.basename(name))
                window.clear()

        try:
            for row in _rows(name, result, default_region, skip_bad_columns=skip_bad_columns,
                             skip_bad_phones=skip_bad_phones, known_phones=known_phones):
                window.append(row)
                if len(window) >= batch_rows:
                    flush()
            flush()
        finally:
            connection.exec_driver_sql("DROP TABLE IF EXISTS attribute_staging")
            connection.commit()
    return result


def _has_columns_to_keep(path: str) -> bool:
    """Whether a CSV's header names anything besides the phone (else storing it would do nothing)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as stream:
            header = next(csv.reader(stream), None) or []
    except (UnicodeDecodeError, csv.Error, OSError):
        return True   # let the import name the problem
    return any(c.strip() and c.strip().lower() != PHONE_COLUMN for c in header)


def store_campaign_attributes(rt: Runtime, path: str | os.PathLike[str], *, default_region: str | None = None,
                              actor: str | None = None, campaign_id: int | None = None) -> AttributeImportResult:
    """A campaign's recipients CSV: store its columns (all but `phone`; `tags` as tags) on the
    contacts of its rows whose phone is valid, as `import_attributes` does. A column whose name
    cannot be an attribute is skipped and listed; a file that cannot be used as a whole (the
    campaign's own import accepted it, so this is rare) stores nothing and says why in
    `skipped_columns`. Never raises for the file: the campaign is already made.
    `campaign_id`: the campaign imported from this file; its recipients' phones are not judged again."""
    name = os.fspath(path)
    if not _has_columns_to_keep(name):
        return AttributeImportResult()

    def recipients_among(digits: list[str]) -> set[str]:
        with rt.session_factory() as session:
            if session.get_bind().dialect.name == "postgresql":   # one array parameter, not 5,000
                phones = sa.bindparam("phones", digits, type_=postgresql.ARRAY(sa.Text))
                where = Message.phone == sa.any_(phones)
            else:
                where = Message.phone.in_(digits)
            return set(session.scalars(sa.select(Message.phone).where(Message.campaign_id == campaign_id, where)))

    try:
        return import_attributes(rt, name, actor=actor, default_region=default_region, skip_bad_columns=True,
                                 skip_bad_phones=True, known_phones=recipients_among if campaign_id else None)
    except AttributeFileError as exc:
        return AttributeImportResult(skipped_columns=[f"all: {exc}"])


# --- one contact, edited --------------------------------------------------------------------------

def _insert(session: Session):  # noqa: ANN202 - the dialect's INSERT with ON CONFLICT
    return (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)


def _attribute_changes(attributes: Any) -> tuple[dict[str, str | None], list[FieldProblem]]:
    """{name: value, or None to remove} and the problems, each naming `attributes.<name>`."""
    if attributes is None:
        return {}, []
    if not isinstance(attributes, Mapping):
        return {}, [FieldProblem("attributes", "must be an object of names to text values")]
    changes: dict[str, str | None] = {}
    problems: list[FieldProblem] = []
    for name, value in attributes.items():
        where = f"attributes.{str(name)[:80].encode('utf-8', 'backslashreplace').decode('utf-8')}"
        problem = attribute_name_problem(name)
        if problem is not None:
            problems.append(FieldProblem(where, problem))
            continue
        if isinstance(value, bool) or not (value is None or isinstance(value, (str, int, float))):
            problems.append(FieldProblem(where, "must be text, a number, or null to remove it"))
            continue
        text = None if value is None else str(value).strip()
        too_long = _value_problem(text) if text else None
        if too_long:
            problems.append(FieldProblem(where, too_long))
        else:
            changes[name] = text or None
    return changes, problems


def _tag_list(field_name: str, tags: Any) -> tuple[list[str], list[FieldProblem]]:
    if tags is None:
        return [], []
    if isinstance(tags, str) or not isinstance(tags, Iterable):
        return [], [FieldProblem(field_name, "must be a list of tags")]
    out: dict[str, None] = {}
    problems: list[FieldProblem] = []
    for i, raw in enumerate(tags):
        tag, problem = normalize_tag(raw)
        if problem is not None:
            problems.append(FieldProblem(f"{field_name}[{i}]", problem))
        else:
            out[tag] = None  # type: ignore[index]
    return list(out), problems


@dataclass(frozen=True)
class ContactAttributes:
    phone: str
    attributes: dict[str, str]
    tags: list[str]
    changed: bool


def edit_contact(rt: Runtime, phone: str, *, attributes: Mapping[str, Any] | None = None, replace: bool = False,
                 tags_add: Iterable[str] | None = None, tags_remove: Iterable[str] | None = None,
                 actor: str | None) -> ContactAttributes:
    """One contact's attributes and tags, edited in one transaction (the API's PATCH, the console's
    form): `attributes` sets each name to its value and removes a name set to null or "" (with
    `replace`, the contact keeps only the given ones); tags are added, then removed. A normalised
    phone not yet a contact becomes one. MessageInvalid naming `attributes.<name>`, `tags_add[i]`
    or `tags_remove[i]` (nothing is written); each write is audited. Opt-out state is untouched."""
    changes, problems = _attribute_changes(attributes)
    adding, add_problems = _tag_list("tags_add", tags_add)
    removing, remove_problems = _tag_list("tags_remove", tags_remove)
    problems += add_problems + remove_problems
    if problems:
        raise MessageInvalid(problems)
    now = utcnow()
    with rt.session_factory.begin() as session:
        session.execute(_insert(session)(Contact).on_conflict_do_nothing(index_elements=["phone"]),
                        [{"phone": phone, "first_seen_at": now, "updated_at": now}])
        contact = session.get(Contact, phone, with_for_update=True, populate_existing=True)
        before = dict(contact.attributes or {})
        after = {} if replace else dict(before)
        for name, value in changes.items():
            if value is None:
                after.pop(name, None)
            else:
                after[name] = value
        if len(after) > ATTRIBUTES_MAX:
            raise MessageInvalid([FieldProblem("attributes", f"would give the contact {len(after)} attributes; "
                                                             f"a contact keeps at most {ATTRIBUTES_MAX}")])
        tags_before = set(session.scalars(sa.select(ContactTag.tag).where(ContactTag.phone == phone)))
        tags_after = (tags_before | set(adding)) - set(removing)
        if len(tags_after) > TAGS_MAX:
            raise MessageInvalid([FieldProblem("tags_add", f"would give the contact {len(tags_after)} tags; "
                                                           f"a contact keeps at most {TAGS_MAX}")])
        subject = int(phone) if phone.isdigit() else None
        if after != before:
            contact.attributes, contact.updated_at = after, now
            record_audit(session, actor, "contact.attributes_changed", "contact", subject, phone=phone,
                         set=sorted(k for k in after if before.get(k) != after[k]),
                         removed=sorted(k for k in before if k not in after))
        added, removed = sorted(tags_after - tags_before), sorted(tags_before - tags_after)
        if added:
            session.execute(_insert(session)(ContactTag).on_conflict_do_nothing(), [{"phone": phone, "tag": t} for t in added])
        if removed:
            session.execute(sa.delete(ContactTag).where(ContactTag.phone == phone, ContactTag.tag.in_(removed)))
        if added or removed:
            record_audit(session, actor, "contact.tags_changed", "contact", subject, phone=phone, added=added,
                         removed=removed)
        return ContactAttributes(phone, after, sorted(tags_after), after != before or bool(added or removed))


def set_attributes(rt: Runtime, phone: str, attributes: Mapping[str, Any], *, actor: str | None,
                   replace: bool = False) -> ContactAttributes:
    """Set (null or "" removes) a contact's attributes; see edit_contact."""
    return edit_contact(rt, phone, attributes=attributes, replace=replace, actor=actor)


def set_tags(rt: Runtime, phone: str, add: Iterable[str] = (), remove: Iterable[str] = (), *,
             actor: str | None) -> ContactAttributes:
    """Add and remove a contact's tags; see edit_contact."""
    return edit_contact(rt, phone, tags_add=add, tags_remove=remove, actor=actor)


# --- reading ---------------------------------------------------------------------------------------

def attributes_of(session: Session, phone: str) -> tuple[dict[str, str], list[str]]:
    """A contact's attributes and its tags (sorted); empty for an unknown phone."""
    attributes = session.scalar(sa.select(Contact.attributes).where(Contact.phone == phone))
    tags = list(session.scalars(sa.select(ContactTag.tag).where(ContactTag.phone == phone).order_by(ContactTag.tag)))
    return dict(attributes or {}), tags


def _chunks(phones: Iterable[str]) -> Iterator[list[str]]:
    unique = list(dict.fromkeys(phones))
    for start in range(0, len(unique), READ_CHUNK):
        yield unique[start:start + READ_CHUNK]


def attributes_for(session: Session, phones: Iterable[str]) -> dict[str, dict[str, str]]:
    """The attributes of each known phone (what a campaign from a segment fills placeholders from);
    a phone that is not a contact is absent."""
    found: dict[str, dict[str, str]] = {}
    for chunk in _chunks(phones):
        found.update((p, dict(a or {})) for p, a in session.execute(
            sa.select(Contact.phone, Contact.attributes).where(Contact.phone.in_(chunk))))
    return found


def tags_for(session: Session, phones: Iterable[str]) -> dict[str, list[str]]:
    """The tags of each phone that has any (sorted)."""
    found: dict[str, list[str]] = {}
    for chunk in _chunks(phones):
        for phone, tag in session.execute(sa.select(ContactTag.phone, ContactTag.tag)
                                          .where(ContactTag.phone.in_(chunk)).order_by(ContactTag.phone, ContactTag.tag)):
            found.setdefault(phone, []).append(tag)
    return found
