"""Uploaded files (a campaign's CSV, a suppression list) copied to disk before they are read.

The API and the console both receive files as multipart uploads; the importers read a path row by
row. One copy loop for both faces: 1 MiB at a time (a 1,000,000-row file never sits in memory), into
a directory of its own that is removed however the request ends.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import asynccontextmanager
from typing import AsyncIterator, Protocol

COPY_CHUNK_BYTES = 1 << 20


class Upload(Protocol):
    """What is read of an upload (starlette's UploadFile)."""

    async def read(self, size: int = -1) -> bytes: ...


async def copy_upload(upload: Upload, path: str | os.PathLike[str]) -> int:
    """Write the upload to `path` in COPY_CHUNK_BYTES chunks; returns how many bytes."""
    written = 0
    with open(path, "wb") as out:
        while chunk := await upload.read(COPY_CHUNK_BYTES):
            out.write(chunk)
            written += len(chunk)
    return written


@asynccontextmanager
async def upload_on_disk(upload: Upload, name: str, *, prefix: str = "buttoncast-upload-") -> AsyncIterator[str]:
    """The upload as a file `name` in a private temporary directory, removed when the block ends."""
    directory = tempfile.mkdtemp(prefix=prefix)
    try:
        path = os.path.join(directory, name)
        await copy_upload(upload, path)
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)
