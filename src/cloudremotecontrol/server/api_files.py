"""File transfer endpoints: blobs (content-addressed uploads), push and pull jobs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import Field
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from ..errors import Conflict, CrcError, Forbidden, InvalidInput, NotFound, TooLarge
from ..protocol.limits import MAX_FILE_BYTES, file_too_large
from ..protocol.messages import FILE_MODE_HEADER, decode_file_mode
from . import auth
from .api import queue_and_deliver
from .blobs import BlobStore, check_sha256
from .methods import HeadFile
from .models import StrictBody
from .ops import files as file_ops
from .ops import retention
from .slots import slots
from .store.base import Store

router = APIRouter(prefix="/v1")
Master = Annotated[dict[str, Any], Depends(auth.master)]
Machine = Annotated[dict[str, Any], Depends(auth.machine)]
LARGE_BODY_PREFIXES = ("/v1/blobs/", "/v1/agent/uploads/")
_BYTES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}}, "description": "the file's content"},
    206: {"content": {"application/octet-stream": {}}, "description": "the range asked for"},
    416: {"description": "The range starts past the file's end (range_not_satisfiable)"},
}
_HASH: dict[int | str, dict[str, Any]] = {
    400: {
        "description": "Invalid input (invalid_input, malformed_json), or a body whose "
        "SHA-256 is not the one declared (hash_mismatch)"
    }
}


class BlobFile(HeadFile):
    """A file, with Range requests; a Range header it cannot serve is answered in the
    API's error shape (400 ``invalid_input``, 416 ``range_not_satisfiable`` with the
    size), not Starlette's plain text or empty body."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        wanted = headers.get("range")
        if wanted is not None and headers.get("if-range") is None:
            size = (await _stat(str(self.path))).st_size
            try:
                check_range(wanted, size)
            except InvalidInput as err:
                await JSONResponse(err.to_payload(), status_code=400)(scope, receive, send)
                return
            except _Unsatisfiable:
                payload = {
                    "error": {
                        "code": "range_not_satisfiable",
                        "message": f"the range asked for starts past the file's end ({size} bytes)",
                    }
                }
                answer = JSONResponse(
                    payload, status_code=416, headers={"Content-Range": f"bytes */{size}"}
                )
                await answer(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


class _Unsatisfiable(Exception):
    """A Range whose ranges are not all within the file."""


_RANGE_SPEC = re.compile(r"([0-9]{0,30})-([0-9]{0,30})")  # longer: no such file


def check_range(header: str, size: int) -> None:
    """Check a ``Range`` header (RFC 9110, 14.1.2: ``bytes=`` then ranges, ``FIRST-``,
    ``FIRST-LAST`` or ``-SUFFIX``) against a file of ``size`` bytes: ``InvalidInput``
    when it is malformed, ``_Unsatisfiable`` when a range starts past the end (or is an
    empty suffix). One the file can serve passes, and the response serves it."""
    unit, sep, specs = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        raise InvalidInput(
            f"bad Range header {header[:80]!r}: only bytes=... ranges", field="range"
        )
    ranges = [spec.strip() for spec in specs.split(",")]
    for spec in ranges:
        m = _RANGE_SPEC.fullmatch(spec)
        if m is None or m.group(1) == m.group(2) == "":
            raise InvalidInput(f"bad Range header {header[:80]!r}: {spec[:40]!r}", field="range")
        first, last = m.group(1), m.group(2)
        if first and last and int(last) < int(first):
            raise InvalidInput(
                f"bad Range header {header[:80]!r}: {spec!r} ends before it starts", field="range"
            )
        if (first and int(first) >= size) or (not first and (int(last) == 0 or size == 0)):
            raise _Unsatisfiable


async def _stat(path: str) -> os.stat_result:
    return await asyncio.to_thread(os.stat, path)


class PushIn(StrictBody):
    to: str = Field(max_length=4096)
    sha256: str = Field(max_length=64)
    path: str = Field(max_length=1024, description="absolute path on the machines")
    mode: str | None = Field(default=None, description="octal, e.g. 0640")
    owner: str | None = Field(default=None, description="USER or USER:GROUP")
    new_mode: str | None = Field(
        default=None,
        description="octal: the mode of the file pushed, which a new file gets less the "
        "machine's umask (mode, if given, wins)",
    )
    name: str | None = Field(
        default=None,
        max_length=255,
        description="the file's name: a path naming a directory on a machine is written "
        "as path/name",
    )


class PullIn(StrictBody):
    machine: str = Field(max_length=63)
    path: str = Field(max_length=1024)


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _blobs(request: Request) -> BlobStore:
    blobs: BlobStore = request.app.state.blobs
    return blobs


async def _receive(request: Request, expected: str | None) -> tuple[str, int]:
    """Store the request's body (``BlobStore.put``). A client gone before the body's end
    (a crc push interrupted, or stopping when its file changed) is no server error:
    nothing is kept, and there is no one to answer. A body declared larger than a file
    may be is refused before any of it is read."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_FILE_BYTES:
        raise TooLarge(file_too_large(f"a file of {int(declared)} bytes", "pushed or pulled"))
    try:
        return await _blobs(request).put(request.stream(), expected, MAX_FILE_BYTES)
    except ClientDisconnect:
        raise InvalidInput("the upload ended before its body did: nothing was kept") from None


@router.head("/blobs/{sha256}", tags=["files"])
async def blob_known(sha256: str, user: Master, request: Request) -> Response:
    """200 if you already uploaded this content (no need to upload again), else 404.
    The headers are those of the download's (``GET``), without opening the file."""
    check_sha256(sha256)
    size = await _store(request).read(file_ops.blob_size, user["user_id"], sha256)
    if size is None or not await _blobs(request).exists(sha256):
        raise NotFound(f"no file {sha256}")
    headers = {"Content-Length": str(size), "Accept-Ranges": "bytes"}
    return Response(status_code=200, headers=headers, media_type="application/octet-stream")


@router.put("/blobs/{sha256}", tags=["files"], responses=_HASH)
async def upload_blob(sha256: str, user: Master, request: Request) -> dict[str, Any]:
    """Upload a file's content (raw body, streamed); its SHA-256 must match the path."""
    check_sha256(sha256)
    with _blobs(request).hold(sha256):  # not dropped as unowned before it has its owner
        sha, size = await _receive(request, sha256)
        await _store(request).write(file_ops.add_blob_owner, user["user_id"], sha, size)
    return {"sha256": sha, "size": size}


@router.get("/blobs/{sha256}", tags=["files"], response_class=FileResponse, responses=_BYTES)
async def download_blob(sha256: str, user: Master, request: Request) -> FileResponse:
    """Download content you uploaded or pulled (Range requests supported)."""
    check_sha256(sha256)
    if await _store(request).read(file_ops.blob_size, user["user_id"], sha256) is None:
        raise NotFound(f"no file {sha256}")
    return BlobFile(await _blobs(request).local_path(sha256), media_type="application/octet-stream")


@router.post("/groups/{group}/files", status_code=201, tags=["files"])
async def push(group: str, body: PushIn, user: Master, request: Request) -> dict[str, Any]:
    """A job that writes an uploaded file to every target machine."""
    check_sha256(body.sha256)
    return await queue_and_deliver(
        request,
        file_ops.create_push,
        user,
        group,
        body.to,
        body.sha256,
        body.path,
        body.mode,
        body.owner,
        body.new_mode,
        body.name,
    )


@router.post("/groups/{group}/pulls", status_code=201, tags=["files"])
async def pull(group: str, body: PullIn, user: Master, request: Request) -> dict[str, Any]:
    """A job that uploads one machine's file; fetch it with GET /v1/jobs/{id}/file."""
    return await queue_and_deliver(
        request, file_ops.create_pull, user, group, body.machine, body.path
    )


@router.get("/jobs/{job_id}/file", tags=["files"])
async def pulled(job_id: str, user: Master, request: Request) -> dict[str, Any]:
    return await _store(request).read(file_ops.pulled_blob, user["user_id"], job_id)


@router.get("/agent/blobs/{sha256}", tags=["agent"], response_class=FileResponse, responses=_BYTES)
async def agent_blob(sha256: str, m: Machine, request: Request) -> FileResponse:
    """The content of an open push to this machine (Range requests supported)."""
    check_sha256(sha256)
    await _store(request).read(file_ops.machine_may_read, m["id"], sha256)
    return BlobFile(await _blobs(request).local_path(sha256), media_type="application/octet-stream")


_ONE_UPLOAD: dict[int | str, dict[str, Any]] = {
    409: {
        "description": "The pull has its file already (already_uploaded): a pull takes one "
        "upload; only the same content (the same X-Content-SHA256) may be sent again. Or "
        "another upload for the pull is under way (upload_in_progress): one at a time"
    }
}


@router.put("/agent/uploads/{job_id}", tags=["agent"], responses={**_HASH, **_ONE_UPLOAD})
async def agent_upload(job_id: str, m: Machine, request: Request) -> dict[str, Any]:
    """A machine uploads the file of an open pull job (raw body, streamed): once, one
    upload at a time. Sending it again with the same ``X-Content-SHA256`` (an answer
    lost) answers the same."""
    expected = request.headers.get("x-content-sha256")
    if expected:
        check_sha256(expected)
    mode = decode_file_mode(request.headers.get(FILE_MODE_HEADER))
    store = _store(request)
    # Refused before the body is stored: a machine cannot fill the disk through one pull.
    await store.read(file_ops.upload_slot, m["id"], job_id, expected or None)
    with _one_at_a_time(request, m["id"], job_id):
        return await _upload(request, store, m["id"], job_id, expected or None, mode)


def _one_at_a_time(
    request: Request, machine_id: str, job_id: str
) -> contextlib.AbstractContextManager[None]:
    """Hold this server process's one upload slot of a pull.

    Until a pull's file is recorded, ``upload_slot`` lets every upload through, so many
    at once would each store a whole body (a pull's file many times over on disk)
    before all but one were refused. A second upload while one is under way is refused
    at once (409 ``upload_in_progress``), before its body is read; the slot is free
    again when the first ends, however it ends (an agent sending the file again after
    it lost the answer, or after its first upload was cut off, is served). Per process:
    replicas sharing a PostgreSQL database take at most one upload of a pull each."""

    def refused() -> Conflict:
        return Conflict(
            f"an upload for pull job {job_id} is under way already: a pull takes one "
            "upload at a time (send it again once that one has ended)",
            code="upload_in_progress",
        )

    return slots(request, "pull_uploads").hold((machine_id, job_id), 1, refused)


async def _upload(
    request: Request,
    store: Store,
    machine_id: str,
    job_id: str,
    expected: str | None,
    mode: int | None = None,
) -> dict[str, Any]:
    blobs = _blobs(request)
    with blobs.hold(expected):
        sha, size = await _receive(request, expected)
    try:
        with blobs.hold(sha):
            await store.write(file_ops.record_upload, machine_id, job_id, sha, size, mode)
    except CrcError as exc:
        # Another upload was recorded meanwhile, or the job ended: the content is not
        # kept unless someone owns it or another upload of it is under way here (one on
        # another replica, in the instant before its owner is recorded, is not seen:
        # that push then fails with a clear error, and pushing again heals it).
        if isinstance(exc, (Conflict, Forbidden)) and not blobs.held(sha):
            if await store.write(retention.drop_unowned, sha):
                with contextlib.suppress(OSError):
                    os.unlink(blobs.path(sha))
        raise
    return {"sha256": sha, "size": size}
