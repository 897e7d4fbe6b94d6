"""Issue 25 item 8: a recipients CSV's header is checked in linear time and bounded.

A 349 KB header took 32.5 s to check (a `list.count` per column), and the 1 MiB line limit allowed
10-16x that. The header is now refused past HEADER_MAX_CHARS characters or HEADER_MAX_COLUMNS
columns, with an error naming the limit, and what is within them is checked in one pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler import recipients_csv
from scheduler.importer import RecipientsFileError, check_header
from scheduler.recipients_csv import HEADER_MAX_CHARS, HEADER_MAX_COLUMNS
from scheduler.template import MessageTemplate

TEMPLATE = MessageTemplate({"body_text": "Hello {{name}}", "buttons": [{"id": "yes", "title": "Yes"}]})


class CountedName(str):
    """A column name that counts how often it is compared. Already trimmed, so trimming keeps it."""

    comparisons = 0

    def __eq__(self, other: object) -> bool:
        CountedName.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__

    def strip(self, chars: str | None = None) -> "CountedName":
        return self

    lstrip = strip


def write_csv(tmp_path: Path, header: str) -> Path:
    path = tmp_path / "recipients.csv"
    path.write_text(header + "\n966501234567,Lina\n", encoding="utf-8")
    return path


def test_item8_a_wide_header_is_checked_in_linear_time() -> None:
    # Given: the widest header allowed, every name distinct, the phone and the placeholder's column last
    width = HEADER_MAX_COLUMNS
    columns = [CountedName(f"column_{i}") for i in range(width - 2)] + [CountedName("phone"), CountedName("name")]
    CountedName.comparisons = 0
    # When: its layout is worked out
    layout = recipients_csv._layout(columns, TEMPLATE, "recipients.csv")
    # Then: it is right, and the names were compared a few times each, not once per pair (~width**2 / 2)
    assert (layout.width, layout.phone_index, layout.variables) == (width, width - 2, (("name", width - 1),))
    assert CountedName.comparisons <= 4 * width, f"{CountedName.comparisons} comparisons for {width} columns"


def test_item8_a_header_over_the_character_limit_is_refused_naming_the_limit(tmp_path: Path) -> None:
    # Given: the audit's header, 349 KB of column names (the 1 MiB line limit would have let it in)
    names = ",".join(f"c{i:06d}" for i in range(349_000 // 8))
    path = write_csv(tmp_path, f"phone,name,{names}")
    assert path.stat().st_size > 349_000
    # When / Then: the file is refused as a whole, naming the limit
    with pytest.raises(RecipientsFileError) as refused:
        check_header(path, TEMPLATE)
    assert "the header (line 1)" in str(refused.value)
    assert f"the limit is {HEADER_MAX_CHARS:,}" in str(refused.value)


def test_item8_a_header_with_a_multi_line_quoted_name_counts_all_its_lines(tmp_path: Path) -> None:
    # Given: a header whose quoted last name spans many short lines, together over the limit
    spread = "\n".join("x" * 60 for _ in range(HEADER_MAX_CHARS // 60 + 10))
    path = write_csv(tmp_path, f'phone,name,"{spread}"')
    # When / Then: refused as over the character limit, not read to its end
    with pytest.raises(RecipientsFileError, match=f"the limit is {HEADER_MAX_CHARS:,}"):
        check_header(path, TEMPLATE)


def test_item8_a_header_over_the_column_limit_is_refused_naming_the_limit(tmp_path: Path) -> None:
    # Given: one column more than allowed, each name short (well within the character limit)
    path = write_csv(tmp_path, ",".join(["phone", "name"] + [f"c{i}" for i in range(HEADER_MAX_COLUMNS - 1)]))
    # When / Then: refused, saying how many columns it has and the limit
    with pytest.raises(RecipientsFileError) as refused:
        check_header(path, TEMPLATE)
    assert f"has {HEADER_MAX_COLUMNS + 1:,} columns; the limit is {HEADER_MAX_COLUMNS:,}" in str(refused.value)


def test_item8_a_header_at_the_limits_is_accepted_and_still_finds_repeats(tmp_path: Path) -> None:
    # Given: exactly HEADER_MAX_COLUMNS columns
    at_limit = ["phone", "name"] + [f"c{i}" for i in range(HEADER_MAX_COLUMNS - 2)]
    check_header(write_csv(tmp_path, ",".join(at_limit)), TEMPLATE)   # no error
    # ...and a repeated name among them is still named
    repeated = at_limit[:-1] + ["c7"]
    with pytest.raises(RecipientsFileError, match="'c7' appear more than once"):
        check_header(write_csv(tmp_path, ",".join(repeated)), TEMPLATE)
