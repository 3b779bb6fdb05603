"""``/adoptions``: copying a whole SQLite file into data.db (its tables,
views, indexes, triggers, full-text tables), private, with the Datasette
metadata that came with it; and the log of what was adopted."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request

from broadsheet.litefs import Pos

from ... import store
from ...datasette.actors import actor_label
from ...settings import settings
from ...store import adoption
from ...store.datasette_metadata import parse_document
from ..deps import Actor, TimeoutQuery, connect
from ..models import ERRORS, AdoptionEntry, AdoptResult, Error
from ..permissions import check_adopt, check_publish
from .tables import _flip

router = APIRouter(prefix="/adoptions", tags=["adoptions"], responses=ERRORS)

# The metadata file travels as a form field: Datasette's metadata.yml of a
# large database is a few hundred kilobytes.
METADATA_MAX_BYTES = 4 * 1024 * 1024


def _split(names: str | None) -> list[str]:
    return [n.strip() for n in (names or "").split(",") if n.strip()]


@router.post(
    "",
    response_model=AdoptResult,
    responses={
        400: {"model": Error}, 403: {"model": Error}, 409: {"model": Error}, 411: {"model": Error},
        413: {"model": Error}, 504: {"model": Error},
    },
    # The form is read by hand (its size checked first), so it is described here.
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {
            "file": {"type": "string", "format": "binary", "description": "The SQLite database"},
            "metadata": {"type": "string", "description": "Datasette metadata (YAML or JSON) for it"},
            "name": {"type": "string", "description": "Its database name in the metadata (default: the file's)"},
        },
    }}}}},
)
async def adopt_file(
    request: Request,
    actor: Actor,
    replace: Annotated[bool, Query(description="Replace data.db's tables and views of the same names")] = False,
    publish: Annotated[str | None, Query(description="Then publish these adopted tables (comma-separated)")] = None,
    timeout: TimeoutQuery = 10,
) -> AdoptResult:
    """Adopt an SQLite file (``multipart/form-data``: ``file``, the database;
    optional ``metadata``, a Datasette metadata.yml/.json or the metadata
    of a datasette.yaml; optional ``name``, the database's name for the
    metadata's ``databases`` key, default the file's name): its tables,
    views, indexes, triggers and full-text tables are copied into data.db
    in one transaction, every table private, and the metadata kept (the
    keys broadsheet does not use are listed in ``ignored``). Refused,
    changing nothing: 400 a file that is not SQLite or is damaged; 409
    names data.db already has (unless ``replace``); 411 no Content-Length;
    413 a body larger than ``BROADSHEET_ADOPT_MAX_BYTES``; 403 an actor who
    may not create tables (and, with ``replace``, drop them) or publish
    what ``publish`` names."""
    conf = settings()
    to_publish = _split(publish)
    await check_adopt(actor, replace)
    for table in to_publish:
        await check_publish(actor, table)
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise HTTPException(411, "An adoption needs a Content-Length (send the file as multipart/form-data)")
    if int(length) > conf.adopt_max_bytes:
        raise HTTPException(
            413, f"The upload is {int(length):,} bytes; this primary adopts at most {conf.adopt_max_bytes:,}"
            " (BROADSHEET_ADOPT_MAX_BYTES)",
        )
    form = await request.form(max_files=1, max_fields=3, max_part_size=METADATA_MAX_BYTES)
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(400, "No file: send the SQLite database as the form's 'file' field")
        name = str(form.get("name") or upload.filename or "data.db")
        metadata_text = form.get("metadata")
        document = parse_document(str(metadata_text), "metadata") if metadata_text else None
        # SQLite opens a file by its name: the spooled upload is copied to one.
        fd, path = tempfile.mkstemp(prefix="adopt-", suffix=".db")
        try:
            with os.fdopen(fd, "wb") as out:
                await asyncio.to_thread(shutil.copyfileobj, upload.file, out, 1024 * 1024)
            source = await asyncio.to_thread(adoption.inspect, path, name)
            unknown = [t for t in to_publish if t not in source.relations]
            if unknown:
                raise store.PublishError(f"Not in {name}, so not published: {', '.join(unknown)}")
            done = await asyncio.to_thread(_adopt, source, document, replace, actor_label(actor))
        finally:
            # A WAL-mode file, once opened, has its -wal and -shm beside it.
            for leftover in (path, f"{path}-wal", f"{path}-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
    finally:
        await form.close()
    private_txid = Pos.read(conf.data_db).txid
    published = [await _flip(table, True, actor, True, timeout) for table in to_publish]
    return AdoptResult(**done.as_dict(), private_txid=private_txid, published=published)


def _adopt(source: adoption.Source, document: dict | None, replace: bool, actor: str) -> adoption.Adoption:
    conn = connect()
    try:
        return adoption.adopt(conn, [source], document, replace=replace, actor=actor)
    finally:
        conn.close()


@router.get("", response_model=list[AdoptionEntry])
async def adoptions(actor: Actor, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict]:
    """The newest adoptions: who, when, which files, the tables each created
    or replaced, the metadata keys it left unused."""
    conn = connect(readonly=True)
    try:
        return adoption.adoptions(conn, limit)
    finally:
        conn.close()
