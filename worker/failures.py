"""Late failures: what a `failed` status webhook's vendor code means, and what a sender does about it.

WhatsApp refuses some messages only after the send call returned 200 and a messageId; the refusal
arrives as a `failed` status webhook with a code (AWAL_API.md, "WhatsApp's own rules"). The code
table and its classes live here and nowhere else:

| code   | class              | what a sender does                                   | resend   |
|--------|--------------------|------------------------------------------------------|----------|
| 131047 | window_closed      | wait until the person writes again                   | yes      |
| 131026 | undeliverable      | not on WhatsApp, old app, or blocked us: do not retry | --force |
| 131050 | opted_out          | the person stopped marketing messages: opt them out  | --force  |
| 131049 | frequency_capped   | per-person marketing cap: maybe another day          | yes      |
| 131048 | quality_risk       | spam rate limit: pause the campaign and look at it   | yes      |
| 130429 | throttled          | throughput: back off, retry                          | yes      |
| 131056 | throttled          | too many to one person too fast: back off, retry     | yes      |
| other  | other              | read the reason                                      | yes      |

*Assumption* (the Awal pages are silent on the failure's shape): the code arrives either in an
error object, WhatsApp style (`data.errors[0].code`, or `data.error.code`, as a number or a digit
string), or only as text in the reason (`data.reason` / the error's message, e.g.
"(#131047) Re-engagement message"). `parse_failure_code` reads all of these, defensively.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any


class FailureClass(str, enum.Enum):
    """What a late failure means for the sender (stored in messages.failure_class)."""

    WINDOW_CLOSED = "window_closed"
    UNDELIVERABLE = "undeliverable"
    OPTED_OUT = "opted_out"
    FREQUENCY_CAPPED = "frequency_capped"
    QUALITY_RISK = "quality_risk"
    THROTTLED = "throttled"
    OTHER = "other"

    @property
    def resend_needs_force(self) -> bool:
        """Resending these cannot help (and an opted-out person must not be messaged again)."""
        return self in (FailureClass.OPTED_OUT, FailureClass.UNDELIVERABLE)

    @property
    def advice(self) -> str:
        return _ADVICE[self]

    @property
    def title(self) -> str:
        """A few words a marketer reads (the console), next to the class's name."""
        return _TITLES[self]

    @classmethod
    def parse(cls, value: str | None) -> "FailureClass | None":
        """The class stored as `value`, or None for a value this version does not know."""
        try:
            return cls(value)
        except ValueError:
            return None

    def __str__(self) -> str:
        return self.value


#: the vendor's late failure codes (WhatsApp Cloud API error codes) and their classes
CODE_CLASSES: dict[str, FailureClass] = {
    "131047": FailureClass.WINDOW_CLOSED,
    "131026": FailureClass.UNDELIVERABLE,
    "131050": FailureClass.OPTED_OUT,
    "131049": FailureClass.FREQUENCY_CAPPED,
    "131048": FailureClass.QUALITY_RISK,
    "130429": FailureClass.THROTTLED,
    "131056": FailureClass.THROTTLED,
}
#: the vendor's own words for each code (what the sandbox sends; shown next to a class)
CODE_TITLES: dict[str, str] = {
    "131047": "Re-engagement message",
    "131026": "Message undeliverable",
    "131050": "User has stopped marketing messages",
    "131049": "Message not delivered to maintain healthy ecosystem engagement",
    "131048": "Spam rate limit hit",
    "130429": "Rate limit hit",
    "131056": "(Business Account, Consumer Account) pair rate limit hit",
}
_ADVICE = {
    FailureClass.WINDOW_CLOSED: "the 24-hour window was closed: resend once the person writes again",
    FailureClass.UNDELIVERABLE: "not on WhatsApp, an old app, or blocked us: resending will not help",
    FailureClass.OPTED_OUT: "the person stopped marketing messages: opted out, never resend",
    FailureClass.FREQUENCY_CAPPED: "per-person marketing cap: may work another day",
    FailureClass.QUALITY_RISK: "spam rate limit, the number's quality is falling: the campaign is paused",
    FailureClass.THROTTLED: "throughput or per-person pace: resend later",
    FailureClass.OTHER: "an unlisted code (or none): read the reason",
}
_TITLES = {
    FailureClass.WINDOW_CLOSED: "24-hour window closed",
    FailureClass.UNDELIVERABLE: "cannot be delivered",
    FailureClass.OPTED_OUT: "stopped marketing messages",
    FailureClass.FREQUENCY_CAPPED: "marketing limit per person",
    FailureClass.QUALITY_RISK: "spam rate limit",
    FailureClass.THROTTLED: "too fast",
    FailureClass.OTHER: "another reason",
}
CODE_MAX_CHARS = 16   # messages.failure_code
_CODE_FIELDS = ("code", "error_code")
_TEXT_FIELDS = ("message", "title", "details", "error_user_msg")
_DIGITS = re.compile(r"^\s*#?(\d{1,9})\s*$")
#: a code inside a text: "(#131047) ...", "code 131047", "131047: ..." (known codes win, anywhere)
_CODE_IN_TEXT = re.compile(r"(?:#|\bcode[\s:=#]*|^\s*)(\d{3,9})\b", re.IGNORECASE)
_KNOWN_IN_TEXT = re.compile(r"(?<!\d)(" + "|".join(CODE_CLASSES) + r")(?!\d)")


def classify(code: str | None) -> FailureClass:
    """The class of a vendor failure code; OTHER for an unknown code or none."""
    return CODE_CLASSES.get(code or "", FailureClass.OTHER)


def parse_failure_code(data: dict[str, Any]) -> str | None:
    """The vendor's failure code in a `failed` status webhook's `data`, or None when it has none.

    Looks, in order, at `errors[0]`, `error`, `reason` (each an object with a code, or a text),
    and takes the first code found; a known code anywhere in a text wins over a number that
    merely looks like one."""
    errors = data.get("errors")
    candidates = [errors[0] if isinstance(errors, list) and errors else None, data.get("error"), data.get("reason")]
    texts: list[str] = []
    for candidate in candidates:
        if isinstance(candidate, dict):
            code = _code_field(candidate)
            if code:
                return code
            texts += [str(candidate[f]) for f in _TEXT_FIELDS if isinstance(candidate.get(f), (str, int))]
            error_data = candidate.get("error_data")
            if isinstance(error_data, dict) and isinstance(error_data.get("details"), str):
                texts.append(error_data["details"])
        elif isinstance(candidate, (str, int)) and not isinstance(candidate, bool):
            texts.append(str(candidate))
    return _code_in_texts(texts)


def _code_field(obj: dict[str, Any]) -> str | None:
    for name in _CODE_FIELDS:
        value = obj.get(name)
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            return str(value)[:CODE_MAX_CHARS]
        if isinstance(value, str):
            match = _DIGITS.match(value)
            if match:
                return match.group(1)
    return None


def _code_in_texts(texts: list[str]) -> str | None:
    for text in texts:
        known = _KNOWN_IN_TEXT.search(text)
        if known:
            return known.group(1)
    for text in texts:
        match = _CODE_IN_TEXT.search(text)
        if match:
            return match.group(1)
    return None


def describe_code(code: str | None) -> str:
    """"131047 window_closed (Re-engagement message)" for logs, pause reasons and reports."""
    klass = classify(code)
    title = CODE_TITLES.get(code or "")
    return f"{code or 'no code'} {klass.value}" + (f" ({title})" if title else "")


@dataclass(frozen=True)
class LateFailure:
    """A late failure as a person reads it (the message page): the vendor's code, its class, what
    the class means, the vendor's title for the code and the vendor's own words (the webhook's reason)."""

    code: str | None
    klass: str
    klass_title: str | None
    meaning: str
    title: str | None
    words: str | None


def explain(code: str | None, klass: str | None, words: str | None) -> LateFailure:
    """`code`/`klass` as stored on the message (messages.failure_code / failure_class), `words` the
    vendor's reason (messages.delivery_error); a class this version does not know keeps its name."""
    known = FailureClass.parse(klass) if klass else classify(code)
    meaning = known.advice if known else "a class this version does not know: read the vendor's words"
    return LateFailure(code=code, klass=klass or classify(code).value, klass_title=known.title if known else None,
                       meaning=meaning, title=CODE_TITLES.get(code or ""), words=words)
