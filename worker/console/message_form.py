"""The message part of the console's forms (New campaign, Follow up): limits shown beside each field,
the form's fields as message.json, and a service problem about `buttons[i]` pointed at its input.

A button row is "filled" when it has an id or a title; rows left empty are skipped, so the i-th
button of the message is the i-th filled row of the form. A button's id (what a tap reports) is
written from its title unless the person sets one under "Advanced": unique within the message, within
the vendor's limit, and never an opt-out id (a tap on "Stop" would otherwise opt people out).
"""

from __future__ import annotations

import re
import unicodedata

from worker import message as limits
from worker.errors import FieldProblem

BUTTON_SLOTS = limits.BUTTONS_MAX
LIMITS = {"header_text": limits.HEADER_TEXT_MAX_CHARS, "body_text": limits.BODY_TEXT_MAX_CHARS,
          "footer_text": limits.FOOTER_TEXT_MAX_CHARS, "button_title": limits.BUTTON_TITLE_MAX_CHARS,
          "button_id": limits.BUTTON_ID_MAX_CHARS}
BUTTON_PROBLEM = re.compile(r"buttons\[(\d+)\]\.(id|title)")
_NOT_WORD = re.compile(r"[\W_]+")


def filled_buttons(form: dict[str, str]) -> list[int]:
    """The form's button rows (1-based) that hold an id or a title, in order."""
    return [i for i in range(1, BUTTON_SLOTS + 1) if form.get(f"button_id_{i}") or form.get(f"button_title_{i}")]


def button_id_from(title: str) -> str:
    """`Book a table!` -> `book_a_table` (what the page's script writes as the title is typed)."""
    plain = "".join(ch for ch in unicodedata.normalize("NFKD", title) if not unicodedata.combining(ch))
    return _NOT_WORD.sub("_", plain.lower()).strip("_")[:limits.BUTTON_ID_MAX_CHARS]


def button_ids(rows: list[tuple[int, str, str]], reserved: frozenset[str] = frozenset()) -> list[str]:
    """Each (row, title, id given) -> its id: the one given, else one from the title (`button_<row>`
    for a title with no letter or digit), with `_2`, `_3` added to stay clear of the ids before it,
    the ids given and `reserved`. The page's script shows the same as each id's placeholder."""
    taken = {given for _, _, given in rows if given} | set(reserved)
    ids = []
    for row, title, given in rows:
        if given:
            ids.append(given)
            continue
        base = button_id_from(title) or f"button_{row}"
        candidate, n = base, 2
        while candidate in taken:
            suffix = f"_{n}"
            candidate, n = base[:limits.BUTTON_ID_MAX_CHARS - len(suffix)] + suffix, n + 1
        taken.add(candidate)
        ids.append(candidate)
    return ids


def template_from(form: dict[str, str], *, ids_from_titles: bool = False,
                  reserved_ids: frozenset[str] = frozenset()) -> dict:
    """The form's fields as message.json: empty optional texts left out, empty button rows skipped;
    with `ids_from_titles`, a button without an id gets one from its title (button_ids)."""
    template: dict = {"body_text": form.get("body_text", "")}
    for name in ("header_text", "footer_text"):
        if form.get(name):
            template[name] = form[name]
    rows = [(i, form.get(f"button_title_{i}", ""), form.get(f"button_id_{i}", "").strip()) for i in filled_buttons(form)]
    ids = button_ids(rows, reserved_ids) if ids_from_titles else [given for _, _, given in rows]
    template["buttons"] = [{"id": button_id, "title": title} for (_, title, _), button_id in zip(rows, ids)]
    return template


def id_placeholders(form: dict[str, str], reserved_ids: frozenset[str] = frozenset()) -> dict[str, str]:
    """`button_id_<row>` -> the id that row's button gets from its title (its input's placeholder)."""
    rows = [(i, form.get(f"button_title_{i}", ""), form.get(f"button_id_{i}", "").strip()) for i in filled_buttons(form)]
    return {f"button_id_{i}": button_id for (i, _, _), button_id in zip(rows, button_ids(rows, reserved_ids))}


def button_input(problem: FieldProblem, form: dict[str, str]) -> str | None | bool:
    """`buttons[1].title` -> the input `button_title_3` when row 3 is the second filled one; None
    for a button past the form's rows; False when the problem is not about a button."""
    button = BUTTON_PROBLEM.fullmatch(problem.field)
    if not button:
        return False
    index, part = int(button.group(1)), button.group(2)
    filled = filled_buttons(form)
    return f"button_{part}_{filled[index]}" if index < len(filled) else None
