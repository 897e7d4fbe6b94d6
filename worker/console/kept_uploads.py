"""The recipients CSV a person chose on New campaign, kept between tries of the form.

A browser never refills a file input, so after any problem the file would have to be chosen
again. Instead the upload is copied once into a private directory under a random token; the page
carries only the token (and shows "ab.csv (2,000 rows)"), and the next try reads the copy. A kept
file belongs to the person who chose it, is removed once the draft is made, and is swept after
KEPT_UPLOAD_TTL_S, or earlier (the oldest first) when the area holds over KEPT_UPLOADS_MAX_BYTES.
"""

from __future__ import annotations

import csv
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from worker.uploads import COPY_CHUNK_BYTES, Upload

KEPT_UPLOAD_TTL_S = 3600.0                  # a kept file is swept this long after it was chosen
KEPT_UPLOADS_MAX_BYTES = 2 * 1024 ** 3      # all kept files together; past it the oldest go first
PREVIEW_ROWS = 50                           # rows the form's preview is given (as the script reads a chosen file)
PREVIEW_BYTES = 65_536                      # ... from at most this much of the file's start
ROOT = Path(tempfile.gettempdir()) / "buttoncast-console-uploads"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")
_FILE, _META = "recipients.csv", "meta.json"


class UploadTooLarge(Exception):
    """The file is over the upload limit; nothing was kept."""


@dataclass(frozen=True)
class KeptUpload:
    token: str
    filename: str
    rows: int        # lines after the header that hold something (a quoted cell over lines counts each)
    size: int
    path: Path


async def keep(upload: Upload, filename: str, owner: str, *, max_bytes: int, root: Path = ROOT) -> KeptUpload:
    """Copy the upload under a new token for `owner` (a person's actor name); UploadTooLarge past `max_bytes`."""
    sweep(root)
    token = secrets.token_urlsafe(24)
    directory = root / token
    directory.mkdir(parents=True, mode=0o700)
    try:
        size = 0
        with open(directory / _FILE, "wb") as out:
            while chunk := await upload.read(COPY_CHUNK_BYTES):
                size += len(chunk)
                if size > max_bytes:
                    raise UploadTooLarge(f"the file is over {max_bytes / 1024 ** 2:,.0f} MB, the largest the console takes")
                out.write(chunk)
        rows = _count_rows(directory / _FILE)
        name = os.path.basename(filename.replace("\\", "/"))[:200] or "recipients.csv"
        (directory / _META).write_text(json.dumps({"owner": owner, "filename": name, "rows": rows, "size": size}))
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return KeptUpload(token, name, rows, size, directory / _FILE)


def find(token: str | None, owner: str, *, root: Path = ROOT, now: float | None = None) -> KeptUpload | None:
    """The kept file of `token` if it is `owner`'s and not expired; else None."""
    if not token or not _TOKEN.fullmatch(token):
        return None
    directory = root / token
    try:
        meta = json.loads((directory / _META).read_text())
        age = (now or time.time()) - (directory / _META).stat().st_mtime
    except (OSError, ValueError):
        return None
    if meta.get("owner") != owner or age > KEPT_UPLOAD_TTL_S:
        return None
    return KeptUpload(token, meta["filename"], meta["rows"], meta["size"], directory / _FILE)


def drop(kept: KeptUpload | None) -> None:
    """Remove a kept file (its draft was made)."""
    if kept is not None:
        shutil.rmtree(kept.path.parent, ignore_errors=True)


def sweep(root: Path = ROOT, *, now: float | None = None, max_bytes: int = KEPT_UPLOADS_MAX_BYTES) -> int:
    """Remove kept files older than KEPT_UPLOAD_TTL_S, then the oldest while all together exceed
    `max_bytes`; returns how many were removed. Each form post sweeps: no timer to run."""
    now = now or time.time()
    try:
        entries = [(d.stat().st_mtime, d) for d in root.iterdir() if d.is_dir() and _TOKEN.fullmatch(d.name)]
    except OSError:
        return 0
    removed = 0
    kept: list[tuple[float, Path, int]] = []
    for mtime, directory in sorted(entries):
        if now - mtime > KEPT_UPLOAD_TTL_S:
            shutil.rmtree(directory, ignore_errors=True)
            removed += 1
        else:
            kept.append((mtime, directory, sum(f.stat().st_size for f in directory.iterdir() if f.is_file())))
    total = sum(size for _, _, size in kept)
    for _, directory, size in kept:
        if total <= max_bytes:
            break
        shutil.rmtree(directory, ignore_errors=True)
        total -= size
        removed += 1
    return removed


def preview(kept: KeptUpload) -> dict[str, list]:
    """The header and the first PREVIEW_ROWS rows, for the form's placeholders and preview (what its
    script reads of a file just chosen)."""
    with open(kept.path, "rb") as raw:
        head = raw.read(PREVIEW_BYTES).decode("utf-8-sig", errors="replace")
    rows = list(csv.reader(head.splitlines()[:PREVIEW_ROWS + 1]))
    header = [c.strip() for c in rows[0]] if rows else []
    return {"header": header, "rows": [r for r in rows[1:] if any(c.strip() for c in r)]}


def _count_rows(path: Path) -> int:
    """Lines after the header that are not blank (a million rows in well under a second)."""
    with open(path, "rb") as source:
        return max(0, sum(1 for line in source if line.strip()) - 1)
