"""Files on the machine: fetch a pushed blob (resumable, verified, atomic) and upload a
file for a pull. Blocking code, run in a worker thread; memory use is one chunk.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from ..errors import InvalidInput, Unavailable
from .http import call_json, http_error

__all__ = ["fetch_blob", "upload_file"]

CHUNK = 1 << 20
ATTEMPTS = 5


def _hash_file(path: str) -> tuple[Any, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest, size


def fetch_blob(
    base_url: str,
    credential: str,
    ctx: ssl.SSLContext | None,
    sha: str,
    size: int,
    dest: str,
    mode: str | None,
    owner: str | None,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Download blob ``sha`` to ``dest``: into ``.crc-<name>.<sha>.part`` beside it,
    resuming with a Range request after a broken transfer, verify the SHA-256, apply
    mode/owner, then rename over ``dest`` (atomic in one directory). Returns a summary."""
    directory = os.path.dirname(dest) or "."
    if not os.path.isdir(directory):
        raise InvalidInput(f"directory {directory} does not exist on this machine")
    if os.path.isdir(dest):
        raise InvalidInput(f"{dest} is a directory on this machine: give the file's path")
    part = os.path.join(directory, f".crc-{os.path.basename(dest)}.{sha[:16]}.part")
    url = f"{base_url.rstrip('/')}/v1/agent/blobs/{sha}"
    for attempt in range(ATTEMPTS):
        have = os.path.getsize(part) if os.path.exists(part) else 0
        if have > size:
            os.unlink(part)
            have = 0
        if have == size:
            break
        headers = {"Authorization": f"Bearer {credential}"}
        if have:
            headers["Range"] = f"bytes={have}-"
        req = urllib.request.Request(url, headers=headers)  # noqa: S310 -- https URL
        try:
            with urllib.request.urlopen(req, timeout=60, context=ctx) as resp:  # noqa: S310
                _receive(resp, part, append=resp.status == 206)
        except _CannotWrite as exc:
            # The machine's own disk (full, read-only, a name too long): trying again
            # cannot help, and a partial file must not keep a full disk full.
            with contextlib.suppress(OSError):
                os.unlink(part)
            raise InvalidInput(
                f"cannot write {dest} on this machine: {exc.error.strerror or exc.error}"
            ) from None
        except urllib.error.HTTPError as exc:
            raise http_error(exc) from None
        except (urllib.error.URLError, OSError, _Broken) as exc:
            if attempt == ATTEMPTS - 1:
                why = exc.error if isinstance(exc, _Broken) else exc
                raise Unavailable(f"download of {sha[:12]} failed: {why}") from None
            sleep(min(10.0, 0.5 * 2**attempt))
    digest, got = _hash_file(part)
    if digest.hexdigest() != sha or got != size:
        os.unlink(part)
        raise InvalidInput(
            f"downloaded content does not match sha256 {sha} "
            f"({got} of {size} bytes): removed, push again",
            code="hash_mismatch",
        )
    try:
        if mode is not None:
            os.chmod(part, int(mode, 8))
        elif os.path.exists(dest):
            os.chmod(part, os.stat(dest).st_mode & 0o7777)
        if owner is not None:
            _chown(part, owner)
        os.replace(part, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise
    return f"{dest}: {size} bytes, sha256 {sha}"


class _CannotWrite(Exception):
    """Writing the partial file failed (the machine's disk, not the network)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _Broken(Exception):
    """Reading the response failed (the network: the download is resumed)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _receive(resp: Any, part: str, append: bool) -> None:
    """Copy the response's body into ``part`` (appended for a 206), synced to disk."""

    def read() -> bytes:
        try:
            return bytes(resp.read(CHUNK))
        except OSError as exc:
            raise _Broken(exc) from None

    try:
        with open(part, "ab" if append else "wb") as fh:
            while chunk := read():
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:  # open, write, flush, sync or close of the file
        raise _CannotWrite(exc) from None


def _chown(path: str, owner: str) -> None:
    if sys.platform == "win32":
        raise InvalidInput(
            "--owner is not supported on Windows (files get the ACL of their directory)"
        )
    import grp
    import pwd

    user, _, group = owner.partition(":")
    try:
        uid = pwd.getpwnam(user).pw_uid
        gid = grp.getgrnam(group).gr_gid if group else -1
    except KeyError as exc:
        raise InvalidInput(f"unknown user or group {exc.args[0]} on this machine") from None
    os.chown(path, uid, gid)


def upload_file(
    base_url: str, credential: str, ctx: ssl.SSLContext | None, job_id: str, path: str
) -> str:
    """Upload ``path`` for pull job ``job_id`` (streamed, with its SHA-256)."""
    if not os.path.isfile(path):
        raise InvalidInput(f"{path} is not a file on this machine")
    digest, size = _hash_file(path)
    with open(path, "rb") as fh:
        call_json(
            f"{base_url.rstrip('/')}/v1/agent/uploads/{job_id}",
            ctx,
            method="PUT",
            data=fh,
            credential=credential,
            timeout=300,
            headers={
                "Content-Length": str(size),
                "Content-Type": "application/octet-stream",
                "X-Content-SHA256": digest.hexdigest(),
            },
        )
    return f"{path}: {size} bytes, sha256 {digest.hexdigest()}"
