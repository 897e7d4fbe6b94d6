"""The audit trail (admins only): every write by a person or an API key, newest first, filtered by
who, what, on what and when, one page at a time or all of it as a CSV (scheduler.audit_trail)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from scheduler import audit_trail
from scheduler.audit_trail import AuditFilter, Cursor
from worker.access.roles import Permission
from worker.access.users import Person
from worker.console.web import allowed, render, runtime
from worker.console.when_form import to_utc
from worker.db import streamed_read
from worker.downloads import DownloadResponse
from worker.runtime import Runtime

router = APIRouter(include_in_schema=False)
ADMIN = Depends(allowed(Permission.ADMIN))
#: "campaign 12", "campaign #12", "campaign", "12"
_SUBJECT = re.compile(r"^\s*(?:([a-z_]{1,32})\s*)?(?:#?\s*(\d{1,18}))?\s*$", re.IGNORECASE)


@dataclass
class _Asked:
    """The filter form as typed (shown back) and as read (`wanted`), with a problem per field."""

    values: dict[str, str]
    wanted: AuditFilter = field(default_factory=AuditFilter)
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def query(self) -> str:
        return urlencode({k: v for k, v in self.values.items() if v})


def _read(actor: str, action: str, subject: str, since: str, until: str, zone: str) -> _Asked:
    asked = _Asked({"actor": actor, "action": action, "subject": subject, "since": since, "until": until})
    match = _SUBJECT.match(subject)
    if match is None:
        asked.problems["subject"] = "write what was changed as a kind and a number, e.g. campaign 12"
        match = _SUBJECT.match("")
    kind, number = match.group(1), match.group(2)
    times = {}
    for name, text in (("since", since), ("until", until)):
        times[name], problem = to_utc(text.strip(), zone)
        if problem:
            asked.problems[name] = problem
    asked.wanted = AuditFilter(actor=actor, action=action, subject_type=audit_trail.subject_type_of(kind or ""),
                               subject_id=int(number) if number else None, **times)
    return asked


@router.get("/audit")
def audit_page(request: Request, actor: str = "", action: str = "", subject: str = "", since: str = "",
               until: str = "", before: str = "", person: Person = ADMIN, rt: Runtime = Depends(runtime)) -> Response:
    zone = rt.settings.console_time_zone
    asked = _read(actor, action, subject, since, until, zone)
    with rt.read_sessions() as session:
        page = audit_trail.audit_page(session, asked.wanted, before=Cursor.parse(before))
    return render(request, "audit.html", page=page, values=asked.values, problems=asked.problems,
                  query=asked.query, paged=bool(before), zone=zone)


@router.get("/audit.csv")
def audit_export(actor: str = "", action: str = "", subject: str = "", since: str = "", until: str = "",
                 person: Person = ADMIN, rt: Runtime = Depends(runtime)) -> Response:
    """Every row the filters match, newest first, streamed as it is read."""
    wanted = _read(actor, action, subject, since, until, rt.settings.console_time_zone).wanted
    return DownloadResponse(streamed_read(rt.read_sessions, lambda s: audit_trail.audit_rows(s, wanted),
                                          audit_trail.stream_audit_csv),
                            media_type="text/csv; charset=utf-8", filename="audit.csv")
