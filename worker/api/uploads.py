"""Campaign uploads: the recipients CSV goes to a temporary file as it arrives, never into memory whole.

Multipart: Starlette's parser spools each file part to disk past 1 MiB, and the part is copied in
1 MiB chunks into a named temporary file that the importer streams row by row (it reads the file
more than once: the header check, `strict`, the import). A JSON body's `recipients` list is written
to the same kind of file, so both paths run the one importer.
"""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator

from fastapi import Request
from starlette.datastructures import UploadFile

from scheduler.importer import RecipientsFileError
from worker.api.deps import parse_json
from worker.api.problems import Problem
from worker.errors import FieldProblem, MessageInvalid
from worker.uploads import copy_upload

#: an A/B test (scheduler.experiments): `variants` in place of `message`, and how to decide
EXPERIMENT_OPTIONS = ("test_share", "decide_after", "metric", "default_variant")
FORM_FIELDS = ("name", "message", "at", "window", "tz", "phone_number_id", "draft", "strict",
               "require_open_window", "expires_at", "opt_out_button", "save_attributes", "variants") + EXPERIMENT_OPTIONS
TEXT_OPTIONS = ("name", "at", "window", "tz", "phone_number_id", "expires_at", "opt_out_button")
FLAG_OPTIONS = ("draft", "strict", "require_open_window", "save_attributes")
FLAGS_ON_BY_DEFAULT = ("save_attributes",)
FORM_FIELD_MAX_BYTES = 1 << 20
#: variants parts the parser reads: one more than a test takes, so a fourth is refused by the
#: core's check (naming `variants`), not by the parser
FORM_VARIANTS_MAX = 4
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")


@dataclass
class CampaignUpload:
    """A create request, whichever its content type: the options and the path of the recipients CSV."""

    options: dict[str, Any]
    recipients_path: str
    filename: str
    _dir: tempfile.TemporaryDirectory = field(repr=False)

    def close(self) -> None:
        self._dir.cleanup()

    @contextlib.contextmanager
    def named_as_uploaded(self) -> Iterator[None]:
        """Errors about the file name the file as the client sent it, not our temporary path."""
        try:
            yield
        except RecipientsFileError as exc:
            exc.args = tuple(str(a).replace(self.recipients_path, self.filename) for a in exc.args)
            raise


def _flag(name: str, text: str) -> bool:
    word = text.strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise MessageInvalid([FieldProblem(name, f"{text!r} is not true or false")])


async def _from_form(request: Request, directory: tempfile.TemporaryDirectory) -> CampaignUpload:
    form = await request.form(max_files=2 + FORM_VARIANTS_MAX, max_fields=len(FORM_FIELDS) + FORM_VARIANTS_MAX + 4,
                              max_part_size=FORM_FIELD_MAX_BYTES)
    try:
        problems = [FieldProblem(k, "is not a known field") for k in form.keys() if k not in FORM_FIELDS + ("recipients",)]
        upload = form.get("recipients")
        if not isinstance(upload, UploadFile):
            problems.append(FieldProblem("recipients", "is required: a CSV file part"))
        texts = {k: v for k, v in form.items() if k in FORM_FIELDS and isinstance(v, str)}
        message_file = form.get("message")
        if isinstance(message_file, UploadFile):  # curl -F message=@message.json sends it as a file
            text = await _part_text(message_file, "message", problems)
            if text is not None:
                texts["message"] = text
        variants = await _variants(form.getlist("variants"), problems)   # the parser bounds how many
        options: dict[str, Any] = {k: texts.get(k) for k in TEXT_OPTIONS + EXPERIMENT_OPTIONS}
        options["variants"] = variants
        for flag in FLAG_OPTIONS:
            try:
                options[flag] = _flag(flag, texts.get(flag, "true" if flag in FLAGS_ON_BY_DEFAULT else ""))
            except MessageInvalid as exc:
                problems.extend(exc.problems)
        try:
            options["template"] = parse_json(texts["message"], "message") if "message" in texts else None
            if options["template"] is None and variants is None:
                problems.append(FieldProblem("message", "is required: message.json as a JSON string "
                                                        "(or 2 or 3 `variants` parts for an A/B test)"))
        except MessageInvalid as exc:
            problems.extend(exc.problems)
        if problems:
            raise MessageInvalid(problems)
        path = os.path.join(directory.name, "recipients.csv")
        await copy_upload(upload, path)
        return CampaignUpload(options, path, upload.filename or "recipients.csv", directory)
    finally:
        await form.close()


async def _part_text(part: str | UploadFile, name: str, problems: list[FieldProblem]) -> str | None:
    """A form field's text, whether sent as a text field or as a file part (`-F name=@file.json`)."""
    if isinstance(part, str):
        return part
    raw = await part.read(FORM_FIELD_MAX_BYTES + 1)
    if len(raw) > FORM_FIELD_MAX_BYTES:
        problems.append(FieldProblem(name, f"is larger than {FORM_FIELD_MAX_BYTES} bytes"))
        return None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        problems.append(FieldProblem(name, "is not UTF-8 text"))
        return None


async def _variants(parts: list[str | UploadFile], problems: list[FieldProblem]) -> list[Any] | None:
    """The `variants` parts, in order, each parsed as JSON (named `variants[i]`); None when there are none."""
    if not parts:
        return None
    variants: list[Any] = []
    for i, part in enumerate(parts):
        text = await _part_text(part, f"variants[{i}]", problems)
        try:
            variants.append(parse_json(text, f"variants[{i}]") if text is not None else None)
        except MessageInvalid as exc:
            problems.extend(exc.problems)
    return variants


#: a JSON body with `segment_id` instead of `recipients`: a campaign (or, with `every`, a series)
#: whose recipients are the segment's members when it starts (scheduler.audience)
AUDIENCE_FIELDS = ("segment_id", "every", "until")
FILE_ONLY_FLAGS = ("strict", "save_attributes")


def _from_segment(body: dict[str, Any], directory: tempfile.TemporaryDirectory) -> CampaignUpload:
    problems = [FieldProblem(str(k), "is not a known field") for k in body
                if k not in ("message", "variants") + TEXT_OPTIONS + FLAG_OPTIONS + AUDIENCE_FIELDS + EXPERIMENT_OPTIONS]
    if "recipients" in body:
        problems.append(FieldProblem("recipients", "give recipients or segment_id, not both"))
    segment_id = body.get("segment_id")
    if not isinstance(segment_id, int) or isinstance(segment_id, bool) or segment_id < 1:
        problems.append(FieldProblem("segment_id", "must be a segment's id (a positive integer)"))
    problems += [FieldProblem(flag, "is about a CSV file; a segment has none") for flag in FILE_ONLY_FLAGS
                 if body.get(flag) not in (None, False) and not (flag == "save_attributes" and body.get(flag) is True)]
    for name in TEXT_OPTIONS + ("every", "until"):
        if body.get(name) is not None and not isinstance(body.get(name), str):
            problems.append(FieldProblem(name, "must be a string"))
    for flag in ("draft", "require_open_window"):
        if not isinstance(body.get(flag, False), bool):
            problems.append(FieldProblem(flag, "must be true or false"))
    if problems:
        raise MessageInvalid(problems)
    options = {k: body.get(k) for k in TEXT_OPTIONS + AUDIENCE_FIELDS + EXPERIMENT_OPTIONS}
    options.update(draft=body.get("draft", False), require_open_window=body.get("require_open_window", False),
                   template=body.get("message"), variants=body.get("variants"))
    return CampaignUpload(options, "", "segment", directory)


def _from_json(body: Any, directory: tempfile.TemporaryDirectory) -> CampaignUpload:
    if not isinstance(body, dict):
        raise MessageInvalid([FieldProblem("body", "must be a JSON object")])
    if "segment_id" in body:
        return _from_segment(body, directory)
    known = ("message", "recipients", "variants") + TEXT_OPTIONS + FLAG_OPTIONS + EXPERIMENT_OPTIONS
    problems = [FieldProblem(str(k), "is not a known field") for k in body if k not in known]
    recipients = body.get("recipients")
    if not isinstance(recipients, list) or not recipients:
        problems.append(FieldProblem("recipients", "must be a non-empty list of objects with a phone"))
        recipients = []
    columns: dict[str, None] = {}
    for i, row in enumerate(recipients):
        if not isinstance(row, dict):
            problems.append(FieldProblem(f"recipients[{i}]", "must be an object with a phone"))
            continue
        for column, value in row.items():
            if value is not None and (isinstance(value, (dict, list, bool)) or not isinstance(value, (str, int, float))):
                problems.append(FieldProblem(f"recipients[{i}].{column}", "must be a string or a number"))
            columns.setdefault(str(column), None)
    for flag in FLAG_OPTIONS:
        if not isinstance(body.get(flag, False), bool):
            problems.append(FieldProblem(flag, "must be true or false"))
    if problems:
        raise MessageInvalid(problems)
    path = os.path.join(directory.name, "recipients.csv")
    with open(path, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(list(columns))
        for row in recipients:
            writer.writerow(["" if row.get(c) is None else str(row.get(c)) for c in columns])
    options = {k: body.get(k) for k in TEXT_OPTIONS + EXPERIMENT_OPTIONS}
    options.update({k: body.get(k, k in FLAGS_ON_BY_DEFAULT) for k in FLAG_OPTIONS}, template=body.get("message"),
                   variants=body.get("variants"))
    for text_field in TEXT_OPTIONS[1:]:
        if options[text_field] is not None and not isinstance(options[text_field], str):
            raise MessageInvalid([FieldProblem(text_field, "must be a string")])
    return CampaignUpload(options, path, "recipients", directory)


async def campaign_upload(request: Request) -> AsyncIterator[CampaignUpload]:
    """A dependency: the parsed create request; its temporary file is removed after the response."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    directory = tempfile.TemporaryDirectory(prefix="buttoncast-upload-")
    try:
        if content_type == "multipart/form-data":
            upload = await _from_form(request, directory)
        elif content_type in ("application/json", ""):
            raw = await request.body()
            upload = _from_json(parse_json(raw) if raw else None, directory)
        else:
            raise Problem(415, "unsupported-media-type", "send multipart/form-data (a CSV file) or application/json")
        yield upload
    finally:
        directory.cleanup()
