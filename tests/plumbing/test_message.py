"""ButtonMessage: every limit of the contract (shared/AWAL_API.md) at its edge, phone normalization,
error texts that name the field and the limit, and the exact bytes that get signed and sent.

Lengths are Unicode code points (the contract's assumption): an emoji is one, and a combining
sequence such as "e" + U+0301 counts as two even though it shows as one letter.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from worker.errors import FieldProblem, MessageInvalid
from worker.message import (
    BODY_TEXT_MAX_CHARS,
    BUTTON_ID_MAX_CHARS,
    BUTTON_TITLE_MAX_CHARS,
    FOOTER_TEXT_MAX_CHARS,
    HEADER_TEXT_MAX_CHARS,
    MULTILINE_FIELDS,
    Button,
    ButtonMessage,
    MessageContent,
    normalize_phone,
    parse_button_spec,
    phone_problem,
)

PHONE = "96650000000"
YES = {"id": "yes", "title": "Yes"}
NO = {"id": "no", "title": "No"}
MAYBE = {"id": "maybe", "title": "Maybe"}
PARTY = "\N{PARTY POPPER}"           # 🎉, one code point (U+1F389), four UTF-8 bytes
COMBINING_ACUTE = "\u0301"


def build(**overrides: Any) -> ButtonMessage:
    fields: dict[str, Any] = {"phone": PHONE, "body_text": "Hello", "buttons": [YES]}
    fields.update(overrides)
    return ButtonMessage.build(**fields)


def problems_of(**overrides: Any) -> list[FieldProblem]:
    with pytest.raises(MessageInvalid) as info:
        build(**overrides)
    assert info.value.problems, "MessageInvalid must list at least one problem"
    return info.value.problems


def only_problem(**overrides: Any) -> FieldProblem:
    problems = problems_of(**overrides)
    assert len(problems) == 1, problems
    return problems[0]


def test_limits_are_the_contracts_numbers() -> None:
    assert (BODY_TEXT_MAX_CHARS, HEADER_TEXT_MAX_CHARS, FOOTER_TEXT_MAX_CHARS) == (1024, 60, 60)
    assert (BUTTON_ID_MAX_CHARS, BUTTON_TITLE_MAX_CHARS) == (256, 20)


# --- body_text ------------------------------------------------------------------------------
def test_body_of_1024_characters_passes_unchanged() -> None:
    body = "b" * 1024
    assert build(body_text=body).content.body_text == body


def test_body_of_1025_characters_fails_naming_body_text_and_1024() -> None:
    problem = only_problem(body_text="b" * 1025)
    assert problem.field == "body_text"
    assert "1024" in problem.problem and "1025" in problem.problem


def test_body_of_1024_emoji_passes_because_an_emoji_is_one_code_point() -> None:
    body = PARTY * 1024
    message = build(body_text=body)
    assert message.content.body_text == body
    assert len(message.body_bytes()) > 4 * 1024  # four UTF-8 bytes each, still 1024 characters


def test_body_of_1025_emoji_fails() -> None:
    assert only_problem(body_text=PARTY * 1025).field == "body_text"


@pytest.mark.parametrize("body", ["", " ", "   \t\n  ", "\u3000"], ids=["empty", "space", "mixed-ws", "ideographic-space"])
def test_empty_or_whitespace_only_body_fails_as_required(body: str) -> None:
    problem = only_problem(body_text=body)
    assert problem.field == "body_text"
    assert "required" in problem.problem


def test_missing_body_fails_as_required() -> None:
    problem = only_problem(body_text=None)
    assert (problem.field, problem.problem) == ("body_text", "is required")


def test_body_that_is_not_a_string_fails() -> None:
    assert only_problem(body_text=42).field == "body_text"


def test_body_with_surrounding_whitespace_is_kept_as_given_not_stripped() -> None:
    assert build(body_text="  Hello  ").content.body_text == "  Hello  "


# --- header_text and footer_text -------------------------------------------------------------
@pytest.mark.parametrize("name", ["header_text", "footer_text"])
def test_header_and_footer_of_60_characters_pass(name: str) -> None:
    message = build(**{name: "h" * 60})
    assert getattr(message.content, name) == "h" * 60


@pytest.mark.parametrize("name", ["header_text", "footer_text"])
def test_header_and_footer_of_61_characters_fail_naming_field_and_60(name: str) -> None:
    problem = only_problem(**{name: "h" * 61})
    assert problem.field == name
    assert "60" in problem.problem and "61" in problem.problem
    assert name in str(MessageInvalid([problem]))


@pytest.mark.parametrize("name", ["header_text", "footer_text"])
def test_header_and_footer_of_60_emoji_pass(name: str) -> None:
    assert getattr(build(**{name: PARTY * 60}).content, name) == PARTY * 60


@pytest.mark.parametrize("name", ["header_text", "footer_text"])
@pytest.mark.parametrize("value", ["", "  ", "\t\n"], ids=["empty", "spaces", "tab-newline"])
def test_optional_header_or_footer_given_as_empty_or_whitespace_fails(name: str, value: str) -> None:
    # Optional means "leave it out", not "send a blank": the vendor would show an empty header.
    problem = only_problem(**{name: value})
    assert problem.field == name
    assert "whitespace" in problem.problem


def test_header_and_footer_left_out_are_absent_from_the_body() -> None:
    payload = json.loads(build().body_bytes())
    assert "header_text" not in payload and "footer_text" not in payload


# --- buttons: count ---------------------------------------------------------------------------
def test_zero_buttons_fail_naming_buttons_and_the_range() -> None:
    problem = only_problem(buttons=[])
    assert problem.field == "buttons"
    assert "0" in problem.problem and "1 to 3" in problem.problem


def test_one_button_passes() -> None:
    assert [b.as_dict() for b in build(buttons=[YES]).content.buttons] == [YES]


def test_three_buttons_pass_in_order() -> None:
    assert [b.as_dict() for b in build(buttons=[YES, NO, MAYBE]).content.buttons] == [YES, NO, MAYBE]


def test_four_buttons_fail_naming_buttons_and_the_range() -> None:
    problem = only_problem(buttons=[YES, NO, MAYBE, {"id": "later", "title": "Later"}])
    assert problem.field == "buttons"
    assert "4" in problem.problem and "3" in problem.problem


def test_buttons_missing_fails() -> None:
    assert only_problem(buttons=None).field == "buttons"


def test_a_button_that_is_not_an_object_fails_naming_its_index() -> None:
    assert only_problem(buttons=[YES, "no"]).field == "buttons[1]"


def test_buttons_given_as_a_generator_are_accepted() -> None:
    assert len(build(buttons=(b for b in [YES, NO])).content.buttons) == 2


# --- buttons: title ---------------------------------------------------------------------------
def test_title_of_20_characters_passes() -> None:
    assert build(buttons=[{"id": "a", "title": "t" * 20}]).content.buttons[0].title == "t" * 20


def test_title_of_21_characters_fails_naming_buttons_0_title_and_20() -> None:
    with pytest.raises(MessageInvalid) as info:
        build(buttons=[{"id": "a", "title": "t" * 21}])
    text = str(info.value)
    assert "buttons[0].title" in text and "20" in text and "21" in text
    assert [p.field for p in info.value.problems] == ["buttons[0].title"]


def test_title_of_21_characters_on_the_third_button_names_buttons_2_title() -> None:
    problem = only_problem(buttons=[YES, NO, {"id": "c", "title": "t" * 21}])
    assert problem.field == "buttons[2].title"


def test_title_of_20_emoji_passes() -> None:
    assert build(buttons=[{"id": "party", "title": PARTY * 20}]).content.buttons[0].title == PARTY * 20


def test_title_of_21_emoji_fails() -> None:
    assert only_problem(buttons=[{"id": "party", "title": PARTY * 21}]).field == "buttons[0].title"


def test_combining_sequence_counts_one_per_code_point_not_per_visible_letter() -> None:
    # Documented behaviour (code points, the contract's assumption): "é" written as e + U+0301 is
    # two characters. Ten of them (20 code points, 10 visible letters) fit a title; eleven do not.
    decomposed_e = "e" + COMBINING_ACUTE
    assert build(buttons=[{"id": "a", "title": decomposed_e * 10}]).content.buttons[0].title == decomposed_e * 10
    problem = only_problem(buttons=[{"id": "a", "title": decomposed_e * 11}])
    assert problem.field == "buttons[0].title" and "22" in problem.problem


def test_zwj_family_emoji_counts_each_code_point() -> None:
    family = "\N{MAN}\u200d\N{WOMAN}\u200d\N{GIRL}"  # one glyph, five code points
    assert len(family) == 5
    assert build(buttons=[{"id": "a", "title": family * 4}]).content.buttons[0].title == family * 4
    assert only_problem(buttons=[{"id": "a", "title": family * 4 + "x"}]).field == "buttons[0].title"


@pytest.mark.parametrize("title", ["", " ", "\t \n"], ids=["empty", "space", "whitespace"])
def test_empty_or_whitespace_only_title_fails(title: str) -> None:
    problem = only_problem(buttons=[{"id": "a", "title": title}])
    assert problem.field == "buttons[0].title"
    assert "required" in problem.problem


def test_missing_title_fails() -> None:
    assert only_problem(buttons=[{"id": "a"}]).field == "buttons[0].title"


def test_duplicate_titles_fail_naming_the_second_button() -> None:
    problem = only_problem(buttons=[{"id": "a", "title": "Same"}, {"id": "b", "title": "Same"}])
    assert problem.field == "buttons[1].title"
    assert "unique" in problem.problem


# --- buttons: id ------------------------------------------------------------------------------
def test_id_of_256_characters_passes() -> None:
    assert build(buttons=[{"id": "i" * 256, "title": "Yes"}]).content.buttons[0].id == "i" * 256


def test_id_of_257_characters_fails_naming_buttons_0_id_and_256() -> None:
    problem = only_problem(buttons=[{"id": "i" * 257, "title": "Yes"}])
    assert problem.field == "buttons[0].id"
    assert "256" in problem.problem and "257" in problem.problem


@pytest.mark.parametrize("button_id", ["", " ", "\n"], ids=["empty", "space", "newline"])
def test_empty_or_whitespace_only_id_fails(button_id: str) -> None:
    problem = only_problem(buttons=[{"id": button_id, "title": "Yes"}])
    assert problem.field == "buttons[0].id"
    assert "required" in problem.problem


def test_missing_id_fails() -> None:
    assert only_problem(buttons=[{"title": "Yes"}]).field == "buttons[0].id"


def test_id_that_is_not_a_string_fails() -> None:
    problem = only_problem(buttons=[{"id": 7, "title": "Yes"}])
    assert problem.field == "buttons[0].id" and "string" in problem.problem


def test_duplicate_button_ids_fail_naming_the_second_button() -> None:
    problem = only_problem(buttons=[{"id": "same", "title": "Yes"}, {"id": "same", "title": "No"}])
    assert problem.field == "buttons[1].id"
    assert "unique" in problem.problem


def test_duplicate_ids_on_buttons_one_and_three_name_the_third() -> None:
    problem = only_problem(buttons=[{"id": "x", "title": "A"}, {"id": "y", "title": "B"}, {"id": "x", "title": "C"}])
    assert problem.field == "buttons[2].id"


# --- phone ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    ["+966 50 000 0000", "+966-50-000-0000", "966 50-000-0000", " +966500000000 ", "+966 (50) 000.0000", 966500000000],
    ids=["plus-spaces", "plus-dashes", "spaces-dashes", "surrounding-spaces", "parens-dots", "int"],
)
def test_phone_with_plus_spaces_and_dashes_is_normalized_to_digits(raw: Any) -> None:
    assert build(phone=raw).phone == "966500000000"
    assert normalize_phone(raw) == "966500000000"


def test_normalized_phone_is_what_goes_into_the_body() -> None:
    assert json.loads(build(phone="+966 50 000 0000").body_bytes())["phone"] == "966500000000"


@pytest.mark.parametrize("raw", ["96650000000a", "9665O000000", "phone", "+966 50 000 000x", "٩٦٦٥٠٠٠٠٠٠٠"],
                         ids=["trailing-letter", "letter-O", "word", "letter-after-separators", "arabic-indic-digits"])
def test_phone_with_letters_or_non_ascii_digits_is_rejected(raw: str) -> None:
    problem = only_problem(phone=raw)
    assert problem.field == "phone"
    assert "digits" in problem.problem


def test_phone_of_7_digits_is_too_short() -> None:
    problem = only_problem(phone="+1234567")
    assert problem.field == "phone"
    assert "7" in problem.problem and "8" in problem.problem


def test_phone_of_8_digits_passes() -> None:
    assert build(phone="12345678").phone == "12345678"


def test_phone_of_15_digits_passes() -> None:
    assert build(phone="+" + "1" * 15).phone == "1" * 15


def test_phone_of_16_digits_is_too_long() -> None:
    problem = only_problem(phone="1" * 16)
    assert problem.field == "phone"
    assert "16" in problem.problem and "15" in problem.problem


@pytest.mark.parametrize("raw", [None, "", "   ", True, 9.665e10, "+", "++96650000000", "966+50000000"],
                         ids=["none", "empty", "spaces", "bool", "float", "plus-only", "double-plus", "plus-inside"])
def test_phone_missing_empty_or_malformed_is_rejected(raw: Any) -> None:
    assert only_problem(phone=raw).field == "phone"


def test_phone_problem_is_none_for_a_valid_number_and_names_a_custom_field() -> None:
    assert phone_problem("966501234567") is None
    problem = phone_problem("abc", field_name="recipients[3].phone")
    assert problem is not None and problem.field == "recipients[3].phone"


def test_normalize_phone_raises_message_invalid_naming_phone() -> None:
    with pytest.raises(MessageInvalid) as info:
        normalize_phone("12")
    assert [p.field for p in info.value.problems] == ["phone"]


# --- several problems, never truncated ------------------------------------------------------
def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(MessageInvalid) as info:
        ButtonMessage.build(
            phone="12ab",
            body_text="b" * 1025,
            buttons=[{"id": "x", "title": "t" * 21}, {"id": "x", "title": " "}],
            header_text="h" * 61,
            footer_text="",
        )
    fields = [p.field for p in info.value.problems]
    assert set(fields) == {"phone", "header_text", "body_text", "footer_text", "buttons[0].title", "buttons[1].id", "buttons[1].title"}
    text = str(info.value)
    for name in ("phone", "body_text", "header_text", "footer_text", "buttons[0].title", "buttons[1].id", "1024", "60", "20"):
        assert name in text
    assert info.value.as_dict()[0].keys() == {"field", "problem"}


def test_build_never_shortens_a_value_at_the_limit() -> None:
    message = build(
        body_text="b" * 1023 + PARTY,
        header_text="h" * 59 + PARTY,
        footer_text="f" * 59 + PARTY,
        buttons=[{"id": "i" * 255 + PARTY, "title": "t" * 19 + PARTY}],
    )
    payload = json.loads(message.body_bytes())
    assert payload["body_text"] == "b" * 1023 + PARTY
    assert payload["header_text"] == "h" * 59 + PARTY
    assert payload["footer_text"] == "f" * 59 + PARTY
    assert payload["buttons"] == [{"id": "i" * 255 + PARTY, "title": "t" * 19 + PARTY}]


def test_build_rejects_rather_than_truncates_one_character_over() -> None:
    # Nothing over a limit ever comes back shortened: build raises instead of returning a message.
    for overrides in (
        {"body_text": "b" * 1025},
        {"header_text": "h" * 61},
        {"footer_text": "f" * 61},
        {"buttons": [{"id": "i" * 257, "title": "t"}]},
        {"buttons": [{"id": "i", "title": "t" * 21}]},
    ):
        with pytest.raises(MessageInvalid):
            build(**overrides)


def test_build_rejects_a_lone_surrogate_that_cannot_be_sent_as_utf8() -> None:
    # A JSON payload may carry "\ud83c" (half an emoji); Python decodes it to a lone surrogate.
    # It is one code point, within every limit, but it cannot be encoded as UTF-8, so the message
    # could never be sent: validation must reject it up front, naming the field, instead of letting
    # body_bytes() raise UnicodeEncodeError later in the worker.
    with pytest.raises(MessageInvalid) as info:
        build(body_text="Hello \ud83c")
    assert [p.field for p in info.value.problems] == ["body_text"]


# --- the bytes that are signed and sent ------------------------------------------------------
def test_body_bytes_match_the_contracts_test_vector_body_exactly() -> None:
    assert build().body_bytes() == b'{"phone":"96650000000","body_text":"Hello","buttons":[{"id":"yes","title":"Yes"}]}'


def test_body_bytes_are_compact_utf8_in_vendor_field_order_with_header_and_footer() -> None:
    message = ButtonMessage.build(
        footer_text="Reply below",
        header_text="Offer \N{PARTY POPPER}",
        buttons=[{"title": "Yes", "id": "yes"}, NO],
        body_text='مرحبا "friend"\n',
        phone="+966 50 000 0000",
    )
    expected = (
        '{"phone":"966500000000","body_text":"مرحبا \\"friend\\"\\n",'
        '"buttons":[{"id":"yes","title":"Yes"},{"id":"no","title":"No"}],'
        '"header_text":"Offer 🎉","footer_text":"Reply below"}'
    ).encode("utf-8")
    assert message.body_bytes() == expected
    assert list(message.payload()) == ["phone", "body_text", "buttons", "header_text", "footer_text"]


def test_body_bytes_send_non_ascii_as_raw_utf8_not_escapes() -> None:
    raw = build(body_text=PARTY).body_bytes()
    assert PARTY.encode("utf-8") in raw
    assert b"\\u" not in raw


def test_body_bytes_drop_extra_keys_of_a_button() -> None:
    message = build(buttons=[{"id": "yes", "title": "Yes", "type": "reply"}])
    assert json.loads(message.body_bytes())["buttons"] == [YES]


# --- MessageContent.from_dict and parse_button_spec -------------------------------------------
def test_content_from_dict_round_trips_as_dict() -> None:
    data = {"body_text": "Hi", "buttons": [YES, NO], "header_text": "H", "footer_text": "F"}
    content = MessageContent.from_dict(data)
    assert content.buttons == (Button("yes", "Yes"), Button("no", "No"))
    assert content.as_dict() == data


def test_content_from_dict_names_an_unknown_field() -> None:
    with pytest.raises(MessageInvalid) as info:
        MessageContent.from_dict({"body_text": "Hi", "buttons": [YES], "footer": "typo"})
    assert [p.field for p in info.value.problems] == ["footer"]


def test_content_from_dict_rejects_a_non_object() -> None:
    with pytest.raises(MessageInvalid) as info:
        MessageContent.from_dict(["not", "a", "dict"])  # type: ignore[arg-type]
    assert [p.field for p in info.value.problems] == ["message"]


def test_content_from_dict_without_validation_keeps_invalid_values() -> None:
    content = MessageContent.from_dict({"body_text": "", "buttons": []}, validate=False)
    assert [p.field for p in content.problems()] == ["body_text", "buttons"]


def test_parse_button_spec_splits_on_the_first_colon() -> None:
    assert parse_button_spec("yes:Yes") == {"id": "yes", "title": "Yes"}
    assert parse_button_spec("time:10:30") == {"id": "time", "title": "10:30"}


def test_parse_button_spec_without_colon_names_the_option() -> None:
    with pytest.raises(MessageInvalid) as info:
        parse_button_spec("yes")
    assert [p.field for p in info.value.problems] == ["--button"]


# --- issue 12 item 10: text WhatsApp cannot show ----------------------------------------------
@pytest.mark.parametrize("title", ["\u200b", " \u200b\u200d ", "\ufeff", "\u2800", "\u3164"],
                         ids=["zwsp", "spaces-and-zero-width", "bom", "braille-blank", "hangul-filler"])
def test_title_of_only_invisible_characters_is_refused_naming_the_field(title: str) -> None:
    """Issue 12 item 10: a title WhatsApp would show as nothing is refused with its field name."""
    problem = only_problem(buttons=[YES, {"id": "no", "title": title}])
    assert problem.field == "buttons[1].title"
    assert "invisible" in problem.problem or "whitespace" in problem.problem


@pytest.mark.parametrize("field_name", ["body_text", "header_text", "footer_text"])
@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\x7f", "\x85"], ids=["nul", "bel", "esc", "del", "nel"])
def test_control_characters_are_refused_in_every_text(field_name: str, char: str) -> None:
    """Issue 12 item 10: NUL and other C0/C1 control characters are refused, naming the field and code point."""
    problem = only_problem(**{field_name: f"Hi{char}there"})
    assert problem.field == field_name and f"U+{ord(char):04X}" in problem.problem


@pytest.mark.parametrize("char", [chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))])
def test_bidi_overrides_and_isolates_are_refused(char: str) -> None:
    """Issue 12 item 10: bidi controls (U+202A-U+202E, U+2066-U+2069) are refused in titles and body."""
    assert only_problem(buttons=[{"id": "a", "title": f"Pay{char}lah"}]).field == "buttons[0].title"
    assert only_problem(body_text=f"Total {char}001").field == "body_text"


def test_newlines_are_fine_in_the_body_but_not_in_titles_header_footer_or_ids() -> None:
    """Issue 12 item 10: MULTILINE_FIELDS (body_text only) is the one place this assumption lives."""
    assert MULTILINE_FIELDS == frozenset({"body_text"})
    assert build(body_text="Line one\nLine two\r\n\tindented").content.body_text.count("\n") == 2
    for overrides, field_name in (({"buttons": [{"id": "a", "title": "Ye\ns"}]}, "buttons[0].title"),
                                  ({"buttons": [{"id": "a\nb", "title": "Yes"}]}, "buttons[0].id"),
                                  ({"header_text": "Hi\nthere"}, "header_text"), ({"footer_text": "Bye\r"}, "footer_text")):
        problem = only_problem(**overrides)
        assert problem.field == field_name and "one line" in problem.problem


def test_arabic_text_with_joiners_and_emoji_sequences_is_still_accepted() -> None:
    """Issue 12 item 10: only controls are refused, not the format characters real text needs (ZWJ, RLM)."""
    family = "\U0001F468\u200d\U0001F469\u200d\U0001F467"
    message = build(body_text="مرحبا\u200f " + family, buttons=[{"id": "a", "title": "نعم " + family}])
    assert family in message.content.body_text
