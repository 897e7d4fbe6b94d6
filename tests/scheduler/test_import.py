"""Recipients import: every row either becomes a pending message or is reported with its line and reason.

Each DB-backed test runs on the real Postgres and on SQLite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa

from scheduler.campaigns import create_campaign, create_with_recipients
from scheduler.importer import ImportRefused, RecipientsFileError, import_recipients
from worker.db import make_engine, make_session_factory, upgrade
from worker.errors import MessageInvalid
from worker.models import Campaign, Message

TEMPLATE = {"header_text": "Hi {{ name }}", "body_text": "Hello {{name}}, your code is {{code}}.",
            "buttons": [{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}]}
_migrated: set[str] = set()


@pytest.fixture(params=["sqlite", "postgres"])
def session_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.orm.sessionmaker]:
    """A migrated database of either kind (Postgres: the run's database, migrated once)."""
    url = f"sqlite:///{tmp_path / 'import.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    if url not in _migrated:
        upgrade(url)
        _migrated.add(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


def write_csv(tmp_path: Path, lines: list[str], *, bom: bool = False, newline: str = "\n") -> Path:
    path = tmp_path / "recipients.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + newline.join(lines).encode("utf-8") + newline.encode())
    return path


def create(sf, path: Path, template: dict = TEMPLATE, **kw) -> tuple[int, object]:  # noqa: ANN001
    return create_with_recipients(sf, path, name="test", phone_number_id="123456", template=template, **kw)


def stored(sf, campaign_id: int) -> dict[str, dict]:  # noqa: ANN001
    with sf() as session:
        rows = session.execute(sa.select(Message.phone, Message.content, Message.status, Message.phone_number_id)
                               .where(Message.campaign_id == campaign_id).order_by(Message.id)).all()
    assert all(r.status == "pending" and r.phone_number_id == "123456" for r in rows)
    return {r.phone: r.content for r in rows}


def counts(sf) -> tuple[int, int]:  # noqa: ANN001
    with sf() as session:
        return session.scalar(sa.select(sa.func.count(Campaign.id))), session.scalar(sa.select(sa.func.count(Message.id)))


def test_bad_rows_are_reported_with_line_and_reason_and_good_rows_imported(session_factory, tmp_path):
    path = write_csv(tmp_path, [
        "phone,name,code",
        "966500000001,Ali,A1",          # line 2 ok
        "96650000abc1,Bad,B1",           # 3 letters in phone
        "12345,Short,C1",                # 4 too few digits
        "9665000000011234567,Long,D1",   # 5 too many digits
        ",NoPhone,E1",                   # 6 empty phone
        "966500000002,,F1",              # 7 empty variable
        "966500000003,Tiny",             # 8 missing variable (short row)
        "966500000004,Extra,G1,surplus",  # 9 more fields than the header
        "966500000005,Sara,H1",          # 10 ok
    ])
    campaign_id, result = create(session_factory, path)
    reasons = {p.line: p.reason for p in result.problems}
    assert (result.imported, result.rejected, result.duplicates) == (2, 7, 0)
    assert "phone" in reasons[3] and "characters other than digits" in reasons[3]
    assert "too short" in reasons[4]
    assert "too long" in reasons[5]
    assert "phone" in reasons[6] and "empty" in reasons[6]
    assert "'name'" in reasons[7] and "{{name}}" in reasons[7]
    assert "'code'" in reasons[8]
    assert "4 fields; the header has 3" in reasons[9]
    assert set(stored(session_factory, campaign_id)) == {"966500000001", "966500000005"}
    with session_factory() as session:
        campaign = session.get(Campaign, campaign_id)
        assert (campaign.recipients_imported, campaign.rows_rejected, campaign.status) == (2, 7, "scheduled")


def test_filled_body_over_1024_rejects_only_the_long_name(session_factory, tmp_path):
    template = {"body_text": "Dear {{name}}, " + "x" * 990, "buttons": [{"id": "ok", "title": "OK"}]}
    long_name = "N" * 40  # "Dear " 5 + 40 + ", " 2 + 990 = 1037 > 1024
    path = write_csv(tmp_path, ["phone,name", "966500000001,Ann", f"966500000002,{long_name}", "966500000003,Bob"])
    campaign_id, result = create(session_factory, path, template=template)
    assert result.imported == 2
    assert [(p.line, p.reason) for p in result.problems] == [(3, "body_text: is 1037 characters; the limit is 1024")]
    assert set(stored(session_factory, campaign_id)) == {"966500000001", "966500000003"}


def test_duplicates_after_normalisation_first_row_wins_even_across_batches(session_factory, tmp_path):
    path = write_csv(tmp_path, [
        "phone,name,code",
        "+966 500-000-001,First,A", "966500000002,Other,B", "966500000001,Second,C",
        "966500000003,Third,D", "+966500000002,Again,E",
    ])
    with session_factory.begin() as session:
        campaign_id = create_campaign(session, name="dups", phone_number_id="123456", template=TEMPLATE, draft=True).id
    result = import_recipients(session_factory, campaign_id, path, batch_rows=2)
    assert (result.imported, result.duplicates, result.rejected) == (3, 2, 0)
    assert [p.line for p in result.duplicate_rows] == [4, 6]
    contents = stored(session_factory, campaign_id)
    assert contents["966500000001"]["body_text"] == "Hello First, your code is A."
    # importing the same file again adds nothing: the stored rows de-duplicate too
    again = import_recipients(session_factory, campaign_id, path)
    assert (again.imported, again.duplicates) == (0, 5)


def test_bom_crlf_extra_columns_unicode_names_and_multiline_fields(session_factory, tmp_path):
    path = write_csv(tmp_path, [
        "Phone , name,code,notes,segment",
        '966500000001,Zoë 🎉,A,"line one\r\nline two",vip',
        "966500000002,محمد,B,,",
        "bad,José,C,,",
    ], bom=True, newline="\r\n")
    campaign_id, result = create(session_factory, path)
    assert result.imported == 2
    assert [p.line for p in result.problems] == [5]  # the quoted field spans lines 2-3
    contents = stored(session_factory, campaign_id)
    assert contents["966500000001"] == {"header_text": "Hi Zoë 🎉", "body_text": "Hello Zoë 🎉, your code is A.",
                                        "buttons": TEMPLATE["buttons"]}
    assert contents["966500000002"]["body_text"] == "Hello محمد, your code is B."


def test_placeholder_without_column_stores_nothing(session_factory, tmp_path):
    before = counts(session_factory)
    path = write_csv(tmp_path, ["phone,name", "966500000001,Ali"])
    with pytest.raises(RecipientsFileError, match=r"\{\{code\}\}.*no column"):
        create(session_factory, path)
    assert counts(session_factory) == before


def test_missing_phone_column_is_a_clear_error(session_factory, tmp_path):
    path = write_csv(tmp_path, ["mobile,name,code", "966500000001,Ali,A"])
    with pytest.raises(RecipientsFileError, match="no 'phone' column"):
        create(session_factory, path)


def test_strict_refuses_the_whole_file(session_factory, tmp_path):
    before = counts(session_factory)
    path = write_csv(tmp_path, ["phone,name,code", "966500000001,Ali,A", "nope,Bad,B"])
    with pytest.raises(ImportRefused) as refused:
        create(session_factory, path, strict=True)
    assert refused.value.result.rejected == 1 and refused.value.result.problems[0].line == 3
    assert counts(session_factory) == before


def test_no_valid_row_leaves_no_campaign(session_factory, tmp_path):
    before = counts(session_factory)
    path = write_csv(tmp_path, ["phone,name,code", "nope,Bad,B"])
    with pytest.raises(ImportRefused, match="no valid recipient"):
        create(session_factory, path)
    assert counts(session_factory) == before


def test_template_checks_before_any_row(tmp_path):
    from scheduler.template import MessageTemplate

    with pytest.raises(MessageInvalid, match=r"buttons\[0\]\.title.*placeholder"):
        MessageTemplate({"body_text": "Hi", "buttons": [{"id": "a", "title": "{{name}}"}]})
    with pytest.raises(MessageInvalid, match="header_text: is 61 characters; the limit is 60"):
        MessageTemplate({"header_text": "{{a}}" + "h" * 60, "body_text": "Hi", "buttons": [{"id": "a", "title": "A"}]})
    constant = MessageTemplate({"body_text": "Same for all", "buttons": [{"id": "a", "title": "A"}]})
    assert constant.names == () and constant.fill({}) == {"body_text": "Same for all", "buttons": [{"id": "a", "title": "A"}]}


# --- issue 12 items 9 and 11 -----------------------------------------------------------------
def test_plus_double_zero_and_bare_international_forms_are_one_recipient(session_factory, tmp_path):
    """Issue 12 item 9: 00966…, +966… and 966… are the same person and de-duplicate as such."""
    path = write_csv(tmp_path, ["phone,name,code", "00966501234567,A,1", "+966 50 123 4567,B,2", "966501234567,C,3",
                                "(+966) 50-123-4567,D,4"])
    campaign_id, result = create(session_factory, path)
    assert (result.imported, result.duplicates, result.rejected) == (1, 3, 0)
    assert list(stored(session_factory, campaign_id)) == ["966501234567"]  # digits only, no '+'


def test_trunk_zero_national_number_needs_a_default_country(session_factory, tmp_path):
    """Issue 12 item 9: 0501234567 is refused naming the missing country code, unless a default is given."""
    path = write_csv(tmp_path, ["phone,name,code", "0501234567,A,1", "966501234568,B,2"])
    _, result = create(session_factory, path)
    assert (result.imported, result.rejected) == (1, 1)
    reason = result.problems[0].reason
    assert result.problems[0].line == 2 and "country calling code" in reason and "DEFAULT_COUNTRY_CODE" in reason
    campaign_id, result = create(session_factory, path, default_region="SA")
    assert (result.imported, result.rejected) == (2, 0)
    assert set(stored(session_factory, campaign_id)) == {"966501234567", "966501234568"}


def test_impossible_and_unallocated_numbers_are_rejected_with_the_reason(session_factory, tmp_path):
    """Issue 12 item 9: too short for SA, an unallocated SA range, an unknown calling code."""
    path = write_csv(tmp_path, ["phone,name,code", "96650000000,A,1", "966521234567,B,2", "999001234567,C,3",
                                "966501234567,D,4"])
    _, result = create(session_factory, path)
    reasons = {p.line: p.reason for p in result.problems}
    assert (result.imported, result.rejected) == (1, 3)
    assert "too short" in reasons[2] and "+966" in reasons[2]
    assert "not a valid number for SA" in reasons[3]
    assert "not a phone number" in reasons[4]


def test_cell_over_the_csv_field_limit_rejects_only_its_row(session_factory, tmp_path):
    """Issue 12 item 11: a cell over csv.field_size_limit() rejects its row; the rows around it import.

    Covers an unquoted cell and a quoted cell spanning lines whose continuation looks like rows.
    """
    import csv

    limit = csv.field_size_limit()
    huge = "x" * (limit + 10)
    path = write_csv(tmp_path, [
        "phone,name,code",
        "966500000001,Ann,A",                       # 2
        f"966500000002,{huge},B",                    # 3 unquoted, over the limit
        "966500000003,Bob,C",                        # 4
        f'966500000004,"{huge}',                     # 5 quoted, over the limit, spans lines 5-7
        '966500000005,Fake,F',                       # 6 (inside the quoted cell: not a row)
        'end",D',                                    # 7
        "966500000006,Cy,E",                         # 8
    ])
    campaign_id, result = create(session_factory, path)
    assert (result.imported, result.rejected) == (3, 2)
    assert [p.line for p in result.problems] == [3, 5]
    assert all(f"{limit:,}" in p.reason and "field limit" in p.reason for p in result.problems)
    assert set(stored(session_factory, campaign_id)) == {"966500000001", "966500000003", "966500000006"}


def test_line_over_the_line_limit_is_one_rejected_row_and_never_held_whole(session_factory, tmp_path, monkeypatch):
    """Issue 12 item 11: memory stays bounded: a physical line over LINE_MAX_CHARS is read in pieces and rejected."""
    from scheduler import recipients_csv as importer

    monkeypatch.setattr(importer, "LINE_MAX_CHARS", 1_000)
    path = write_csv(tmp_path, ["phone,name,code", "966500000001,Ann,A", "966500000002," + "y" * 5_000 + ",B",
                                "966500000003,Bob,C"])
    campaign_id, result = create(session_factory, path)
    assert (result.imported, result.rejected) == (2, 1)
    assert result.problems[0].line == 3 and "1,000 characters" in result.problems[0].reason
    assert set(stored(session_factory, campaign_id)) == {"966500000001", "966500000003"}
