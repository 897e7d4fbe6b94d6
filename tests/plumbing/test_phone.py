"""Issue 12 item 9: phone numbers by libphonenumber's rules (worker/phone.py), one normaliser everywhere."""

from __future__ import annotations

from typing import Any

import pytest

from worker.errors import ConfigError, MessageInvalid
from worker.message import ButtonMessage
from worker.phone import judge_phone, normalize_phone, parse_default_country, wire_phone_problem
from worker.settings import Settings

SAME_PERSON = ["+966501234567", "00966501234567", "966501234567", "+966 50 123 4567", "00 966 (50) 123-4567",
               "966.50.123.4567", 966501234567]


@pytest.mark.parametrize("raw", SAME_PERSON)
def test_every_international_form_is_the_same_e164_digits(raw: Any) -> None:
    """Issue 12 item 9: +966…, 00966… and 966… normalise to one stored form, digits only, no '+'."""
    assert normalize_phone(raw) == "966501234567"


def test_trunk_zero_national_number_is_refused_naming_the_missing_country_code() -> None:
    """Issue 12 item 9: 0501234567 without a default country names the country code and the settings."""
    with pytest.raises(MessageInvalid) as info:
        normalize_phone("0501234567")
    problem = info.value.problems[0]
    assert problem.field == "phone"
    assert "country calling code" in problem.problem and "DEFAULT_COUNTRY_CODE" in problem.problem
    assert "--default-country" in problem.problem


@pytest.mark.parametrize("region", ["SA", parse_default_country("966")])
def test_trunk_zero_national_number_with_a_default_country(region: str) -> None:
    """Issue 12 item 9: with a default country a national number becomes international digits."""
    assert normalize_phone("050 123 4567", default_region=region) == "966501234567"
    assert normalize_phone("+447400123456", default_region=region) == "447400123456"  # explicit beats default


@pytest.mark.parametrize(("raw", "words"), [
    ("96650000000", "too short"), ("96650123456789", "too long"), ("966521234567", "not a valid number for SA"),
    ("999001234567", "not a phone number"), ("+1 555 0100", "too short"), ("abc", "characters other than digits"),
    ("", "empty"), (None, "required"),
])
def test_impossible_or_unallocated_numbers_are_refused_with_the_reason(raw: Any, words: str) -> None:
    """Issue 12 item 9: is_valid_number decides (an unallocated range is refused, not only a wrong length)."""
    digits, problem = judge_phone(raw)
    assert digits is None and problem is not None and words in problem.problem, problem


def test_italian_leading_zero_is_kept_in_the_digits() -> None:
    """Issue 12 item 9: the fast E.164 formatting keeps a national leading zero (Italy's fixed lines)."""
    assert normalize_phone("+39 06 6982 0000") == "390669820000"


@pytest.mark.parametrize(("text", "region"), [("SA", "SA"), ("sa", "SA"), ("966", "SA"), ("+966", "SA"),
                                              ("1", "US"), ("", None), (None, None)])
def test_default_country_takes_a_region_or_a_calling_code(text: str | None, region: str | None) -> None:
    """Issue 12 item 9: DEFAULT_COUNTRY_CODE accepts SA or 966 (a shared code maps to its main region)."""
    assert parse_default_country(text) == region


@pytest.mark.parametrize("text", ["XX", "999", "Saudi", "+"])
def test_default_country_that_is_neither_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="DEFAULT_COUNTRY_CODE"):
        Settings.from_env({"DEFAULT_COUNTRY_CODE": text})


def test_settings_read_default_country_code() -> None:
    assert Settings.from_env({}).default_country_code is None
    assert Settings.from_env({"DEFAULT_COUNTRY_CODE": "966"}).default_country_code == "SA"


def test_button_message_judges_the_number_only_where_it_enters() -> None:
    """Issue 12 item 9: enqueue judges (judge_number); a stored row is sent in its wire form as stored."""
    with pytest.raises(MessageInvalid, match="too short"):
        ButtonMessage.build(phone="96650000000", body_text="Hi", buttons=[{"id": "a", "title": "A"}], judge_number=True)
    message = ButtonMessage.build(phone="0501234567", body_text="Hi", buttons=[{"id": "a", "title": "A"}],
                                  judge_number=True, default_region="SA")
    assert message.phone == "966501234567"
    assert ButtonMessage.build(phone="999001234567", body_text="Hi", buttons=[{"id": "a", "title": "A"}]).phone == "999001234567"
    assert wire_phone_problem("+966 50") is not None and wire_phone_problem("966501234567") is None
