"""Phone numbers: the one place where a recipient's number is parsed, judged and normalised.

Issue 12 item 9. libphonenumber's rules (the `phonenumbers` package) decide what a number is:
- `+966 50 123 4567`, `00966501234567` and `966501234567` are the same person: a number with a
  `+`, with the `00` international prefix, or with bare digits that do not start with `0` is read
  as international (country code first), which is also the vendor's wire format (AWAL_API.md).
- `0501234567` is a national number (trunk prefix `0`): it needs a country, from
  DEFAULT_COUNTRY_CODE or `--default-country`; without one it is refused with a message saying so.
- A number must be *valid* for its country (`is_valid_number`: an allocated range of the right
  length), not merely *possible* (right length): for a bulk sender every unallocated number is a
  paid, rate-limited request that can only fail, so it is refused at import with the reason.
  The rules are libphonenumber's metadata: keep `phonenumbers` current (a range allocated after
  the installed release is refused until it is upgraded).
The result is what the vendor wants: the E.164 number without its `+`, digits only.
Nothing is cached: one parse + validate + format costs tens of microseconds.
"""

from __future__ import annotations

import re
from typing import Any

import phonenumbers
from phonenumbers import NumberParseException, ValidationResult

from worker.errors import ConfigError, FieldProblem, MessageInvalid

#: what may separate digit groups in an input number; removed before parsing
_SEPARATORS = re.compile(r"[\s\-().]")
INTERNATIONAL_PREFIX = "00"           # the ITU-recommended international call prefix (most countries)
TRUNK_PREFIX = "0"                    # a national number's trunk prefix, e.g. 0501234567
E164_MAX_DIGITS = 15                  # the vendor's wire format is E.164 without '+'
WIRE_MIN_DIGITS = 8                   # shorter than any E.164 number with its country code
SETTING_NAMES = "DEFAULT_COUNTRY_CODE (or --default-country on import)"

_POSSIBLE_REASONS = {
    ValidationResult.INVALID_COUNTRY_CODE: "has no known country calling code",
    ValidationResult.TOO_SHORT: "is too short for its country",
    ValidationResult.TOO_LONG: "is too long for its country",
    ValidationResult.INVALID_LENGTH: "has a length no number of its country has",
}


def normalize_phone(raw: Any, *, default_region: str | None = None, field_name: str = "phone") -> str:
    """An input number -> digits of its E.164 form; raises MessageInvalid with the reason.

    `default_region` (an ISO 3166 region such as "SA", see `parse_default_country`) is used only
    for a national number written with its trunk `0`.
    """
    digits, problem = judge_phone(raw, default_region=default_region, field_name=field_name)
    if problem is not None:
        raise MessageInvalid([problem])
    return digits  # type: ignore[return-value]


def phone_problem(raw: Any, *, default_region: str | None = None, field_name: str = "phone") -> FieldProblem | None:
    """Why `raw` is not a number we can send to (None when it is one)."""
    return judge_phone(raw, default_region=default_region, field_name=field_name)[1]


def judge_phone(raw: Any, *, default_region: str | None = None, field_name: str = "phone") -> tuple[str | None, FieldProblem | None]:
    """(normalised digits, None) or (None, the problem): one parse, for the import's hot path."""
    if raw is None or not isinstance(raw, (str, int)) or isinstance(raw, bool):
        return None, FieldProblem(field_name, "is required (a phone number in international format)")
    text = str(raw).strip()
    if not text:
        return None, FieldProblem(field_name, "is empty; a phone number in international format is required")
    compact = _SEPARATORS.sub("", text)
    plus = compact.startswith("+")
    digits = compact[1:] if plus else compact
    if not digits.isascii() or not digits.isdigit():
        return None, FieldProblem(field_name, f"{_shown(text)} has characters other than digits, '+', spaces, dots, dashes and parentheses")
    if plus:
        number_text, region = "+" + digits, None
    elif digits.startswith(INTERNATIONAL_PREFIX):
        number_text, region = "+" + digits[len(INTERNATIONAL_PREFIX):], None
    elif digits.startswith(TRUNK_PREFIX):
        if not default_region:
            return None, FieldProblem(
                field_name, f"{_shown(text)} is a national number (trunk prefix 0) and has no country calling code: "
                            f"write it as +<country code><number> (e.g. +966501234567), or set {SETTING_NAMES}",
            )
        number_text, region = digits, default_region
    else:
        number_text, region = "+" + digits, None  # the vendor's format: country code first, no '+'
    try:
        number = phonenumbers.parse(number_text, region)
    except NumberParseException as exc:
        return None, FieldProblem(field_name, f"{_shown(text)} is not a phone number ({exc._msg})")
    if not phonenumbers.is_valid_number(number):
        return None, FieldProblem(field_name, _invalid_reason(text, number))
    # E.164 digits; the same as format_number(E164)[1:], without its formatting machinery
    return f"{number.country_code}{_leading_zeros(number)}{number.national_number}", None


def _leading_zeros(number: phonenumbers.PhoneNumber) -> str:
    return "0" * (number.number_of_leading_zeros or 1) if number.italian_leading_zero else ""


def _invalid_reason(text: str, number: phonenumbers.PhoneNumber) -> str:
    """Why a parsed number is refused: impossible (length) or possible but unallocated."""
    possible = phonenumbers.is_possible_number_with_reason(number)
    if possible == ValidationResult.IS_POSSIBLE_LOCAL_ONLY:
        return f"{_shown(text)} is too short: a local number without its area code (country code +{number.country_code})"
    if possible not in (ValidationResult.IS_POSSIBLE, ValidationResult.IS_POSSIBLE_LOCAL_ONLY):
        return f"{_shown(text)} {_POSSIBLE_REASONS.get(possible, 'is not a possible number')} (country code +{number.country_code})"
    where = phonenumbers.region_code_for_country_code(number.country_code)
    return f"{_shown(text)} is not a valid number for {where} (+{number.country_code}): no such range is allocated"


def wire_phone_problem(raw: Any, field_name: str = "phone") -> FieldProblem | None:
    """Is `raw` in the vendor's wire format (E.164 digits, no '+')? For numbers already stored.

    The number itself was judged by `judge_phone` when it entered (import, enqueue); a stored row
    is sent as stored, so a newer libphonenumber release never strands a row mid-campaign.
    """
    if raw is None or not isinstance(raw, (str, int)) or isinstance(raw, bool):
        return FieldProblem(field_name, "is required (a phone number in international format)")
    text = str(raw).strip()
    digits = _SEPARATORS.sub("", text).removeprefix("+")
    if not digits.isascii() or not digits.isdigit():
        return FieldProblem(field_name, f"{_shown(text)} is not E.164 digits (international format, digits only)")
    if not WIRE_MIN_DIGITS <= len(digits) <= E164_MAX_DIGITS:
        return FieldProblem(field_name, f"{_shown(text)} has {len(digits)} digits; E.164 numbers have {WIRE_MIN_DIGITS} to {E164_MAX_DIGITS}")
    return None


def wire_phone(raw: Any) -> str:
    """A stored number's wire form: separators and '+' removed (call wire_phone_problem first)."""
    return _SEPARATORS.sub("", str(raw).strip()).removeprefix("+")


def parse_default_country(text: str | None, setting: str = "DEFAULT_COUNTRY_CODE") -> str | None:
    """"SA", "sa", "966" or "+966" -> the region "SA" (None when unset); ConfigError otherwise.

    A calling code shared by several regions (1, 7, 44...) maps to its main region; a national
    number of any of them is still judged valid, since validity is checked for the calling code.
    """
    value = (text or "").strip()
    if not value:
        return None
    if value.removeprefix("+").isdigit():
        region = phonenumbers.region_code_for_country_code(int(value.removeprefix("+")))
        if region in (None, phonenumbers.UNKNOWN_REGION, "001"):
            raise ConfigError(f"{setting}={value!r} is not a country calling code of any region (e.g. 966 or SA)")
        return region
    region = value.upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigError(f"{setting}={value!r} is neither an ISO 3166 region code nor a calling code (e.g. SA or 966)")
    return region


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "…")
