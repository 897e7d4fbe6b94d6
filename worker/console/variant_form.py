"""An A/B test in the New campaign form: variants B and C beside the first message, and the test's options.

Variant A is the form's message fields as they always were (`body_text`, `button_title_1`, ...);
variant B's and C's carry a prefix (`vb_body_text`, `vc_button_title_1`). A variant's inputs are
posted only while it is shown (a hidden variant's fieldset is disabled), so the variants asked for
are the ones whose body was posted. Each variant becomes message.json through message_form, and a
service problem named `Variant B: buttons[0].title` goes back to the input `vb_button_title_1`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from scheduler.experiments import LETTERS, MAX_VARIANTS, METRICS
from worker.console.message_form import template_from
from worker.errors import FieldProblem

PREFIXES = {"A": "", "B": "vb_", "C": "vc_"}
#: what the service calls each variant in its problems ("Variant B: body_text")
LABELS = {letter: f"Variant {letter}" for letter in LETTERS}
#: the metric select: value, words
METRIC_CHOICES = (("taps", "Taps on a button"), ("replies", "Replies (a tap or a text)"), ("reads", "Reads"))
assert tuple(m for m, _ in METRIC_CHOICES) == METRICS
#: a fresh form's test options: a fifth of the audience tested, the winner 4 hours after it is sent
DEFAULTS = {"test_share_percent": "20", "decide_after": "4h", "metric": "taps", "default_variant": "A"}
#: the test's options: the service's field -> the form's input
OPTION_INPUTS = {"test_share": "test_share_percent", "decide_after": "decide_after", "metric": "metric",
                 "default_variant": "default_variant"}
#: inputs every variant shares (a problem about them is not a variant's)
SHARED_INPUTS = {"opt_out_button"}
#: how the list of problems atop the form names an input (others: its name in words)
INPUT_WORDS = {"header_text": "header", "body_text": "body", "footer_text": "footer", "at": "start",
               "test_share_percent": "test group %", "decide_after": "choose the winner after",
               "metric": "the winner has the best rate of", "default_variant": "with no clear winner",
               "phone_number_id": "sender", "every_custom": "custom interval", "segment": "saved segment",
               "window": "daily window", "tz": "time zone", "until": "until",
               "recipients": "recipients CSV", "name": "campaign name", "opt_out_button": "opt-out button"}
_BUTTON_INPUT = re.compile(r"button_(title|id)_(\d+)")


@dataclass
class Bound:
    """The form's message as the service takes it: `template` (one message) or `variants` with their
    options; `share_problem`: the percentage field in words, when it is not a share."""

    letters: str
    template: dict | None = None
    variants: list[dict] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    share_problem: str | None = None


def letters_in(form: dict[str, str]) -> str:
    """The variants the form holds: A, and B/C when their fields were posted (shown); with the
    no-script buttons, one more (`add_variant`) or one fewer (`remove_variant`)."""
    letters = "A" + "".join(x for x in LETTERS[1:] if f"{PREFIXES[x]}body_text" in form)
    if form.get("add_variant"):
        letters = LETTERS[:min(len(letters) + 1, MAX_VARIANTS)]
    elif form.get("remove_variant") and len(letters) > 1:
        letters = letters[:-1]
    return letters


def resized(form: dict[str, str]) -> dict[str, str]:
    """The form's values after a no-script "Add a variant" / "Remove" button: the variants
    `letters_in` counts, an added one with empty fields, a removed one's fields gone."""
    letters = letters_in(form)
    values = {k: v for k, v in form.items() if k not in ("add_variant", "remove_variant")}
    for letter in LETTERS[1:]:
        prefix = PREFIXES[letter]
        if letter in letters:
            values.setdefault(f"{prefix}body_text", "")
        else:
            values = {k: v for k, v in values.items() if not k.startswith(prefix)}
    return values


def sub_form(form: dict[str, str], letter: str) -> dict[str, str]:
    """One variant's message fields under the names message_form reads (`vb_body_text` -> `body_text`)."""
    prefix = PREFIXES[letter]
    if not prefix:
        return form
    return {name[len(prefix):]: value for name, value in form.items() if name.startswith(prefix)}


def percent_to_share(text: str) -> tuple[float | str, str | None]:
    """`20` -> 0.2. Anything else is passed on as given (the service refuses it too) with the words
    for the percentage field."""
    try:
        percent = float(text.strip().rstrip("%").strip())
    except ValueError:
        return text, f"{text!r} is not a number; give a percentage above 0 and at most 100"
    if not 0 < percent <= 100:
        return percent / 100, (f"{percent:g} % is outside 0-100 %; e.g. 20 tests on a fifth of the recipients, "
                               "100 sends every variant to an even split and only reports")
    return percent / 100, None


def bind(form: dict[str, str], reserved_ids: frozenset[str] = frozenset()) -> Bound:
    """The message (A alone) or the variants and the test's options, as the service's keywords; a
    button without an id gets one from its title (none of `reserved_ids`: the opt-out ids)."""
    letters = letters_in(form)

    def message(fields: dict[str, str]) -> dict:
        return template_from(fields, ids_from_titles=True, reserved_ids=reserved_ids)

    if len(letters) < 2:
        return Bound(letters, template=message(form))
    share, share_problem = percent_to_share(form.get("test_share_percent", ""))
    options = {"test_share": share, "decide_after": form.get("decide_after", "").strip() or None,
               "metric": form.get("metric") or None, "default_variant": form.get("default_variant") or None,
               "variant_labels": [LABELS[x] for x in letters]}
    return Bound(letters, variants=[message(sub_form(form, x)) for x in letters], options=options,
                 share_problem=share_problem)


def input_words(name: str, variants: bool = False) -> str:
    """`vb_button_title_2` -> `Variant B: button 2 title`; `decide_after` -> `Choose the winner after`;
    with `variants`, the first message's inputs are variant A's (`body_text` -> `Variant A: body`)."""
    letter = next((x for x, prefix in PREFIXES.items() if prefix and name.startswith(prefix)), None)
    rest = name[len(PREFIXES[letter]):] if letter else name
    button = _BUTTON_INPUT.fullmatch(rest)
    if letter is None and variants and (button or rest in ("header_text", "body_text", "footer_text")):
        letter = "A"
    words = f"button {button.group(2)} {button.group(1)}" if button else INPUT_WORDS.get(rest, rest.replace("_", " "))
    return f"{LABELS[letter]}: {words}" if letter else words[:1].upper() + words[1:]


def input_for(problem: FieldProblem, form: dict[str, str], bound: Bound,
              field_of: Callable[[FieldProblem, dict[str, str]], str | None]) -> tuple[str | None, str]:
    """The input a service problem goes next to (None: the form as a whole) and its words.
    `field_of` maps a problem about one message's fields to its input (the form's own mapping)."""
    label, sep, rest = problem.field.partition(": ")
    letter = next((x for x, name in LABELS.items() if name == label), None) if sep else None
    if letter is not None:
        inner = field_of(FieldProblem(rest, problem.problem), sub_form(form, letter))
        if inner is None:
            return None, str(problem)
        return (inner if inner in SHARED_INPUTS else PREFIXES[letter] + inner), problem.problem
    if problem.field == "test_share":
        return OPTION_INPUTS["test_share"], bound.share_problem or problem.problem
    if problem.field in OPTION_INPUTS:
        return OPTION_INPUTS[problem.field], problem.problem
    name = field_of(problem, form)
    return name, problem.problem if name else str(problem)
