"""File transfer: push a blob to machines, pull a file from one machine.

A push is a job of kind ``file.put`` whose targets fetch the blob over HTTPS (with
Range/resume), verify its SHA-256, and write it atomically; a pull is a ``file.get``
job whose one target uploads the file, which then belongs to the job's user.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from ...errors import Conflict, Forbidden, InvalidInput, NotFound
from ...protocol.fields import check_push_path
from ...protocol.messages import FileGet, FilePut, decode_file_mode
from ...protocol.names import check_name
from ...protocol.states import JobStatus, MachineState
from ..store.base import Tx
from .common import dumps, live_group, now
from .jobs import create_kind

__all__ = [
    "add_blob_owner",
    "blob_size",
    "create_pull",
    "create_push",
    "machine_may_read",
    "pulled_blob",
    "record_upload",
    "upload_slot",
]

_OPEN = (JobStatus.QUEUED.value, JobStatus.DELIVERED.value, JobStatus.RUNNING.value)


def add_blob_owner(tx: Tx, user_id: str, sha: str, size: int) -> None:
    tx.execute(
        "INSERT INTO blob_owners (user_id, sha, size, created) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (user_id, sha) DO UPDATE SET created = excluded.created",
        (user_id, sha, size, now()),
    )


def blob_size(tx: Tx, user_id: str, sha: str) -> int | None:
    """The size of blob ``sha`` if this user uploaded (or pulled) it, else None."""
    row = tx.one("SELECT size FROM blob_owners WHERE user_id = ? AND sha = ?", (user_id, sha))
    return int(row["size"]) if row else None


def create_push(
    tx: Tx,
    user: dict[str, Any],
    group: str,
    to: str,
    sha: str,
    path: str,
    mode: str | None,
    owner: str | None,
    new_mode: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """``new_mode``: the mode of the master's file, which a new file gets (less the
    umask); ``name``: its name, for a ``path`` that is a directory on a machine. Both
    optional: left out of the job when not given (an older master)."""
    size = blob_size(tx, user["user_id"], sha)
    if size is None:
        raise NotFound(
            f"no uploaded file {sha}: upload it first (PUT /v1/blobs/{{sha256}})", field="sha256"
        )
    body = {"sha256": sha, "size": size, "path": path, "mode": mode, "owner": owner}
    body |= {k: v for k, v in (("new_mode", new_mode), ("name", name)) if v is not None}
    # Retention counts from the last use (ops/retention.py).
    tx.execute(
        "UPDATE blob_owners SET created = ? WHERE user_id = ? AND sha = ?",
        (now(), user["user_id"], sha),
    )
    return create_kind(
        tx,
        user,
        group,
        to,
        lambda job_id: FilePut.from_body({**body, "job_id": job_id}),
        {"sha256": sha, "path": path, "size": size},
        blob=sha,
    )


def create_pull(
    tx: Tx, user: dict[str, Any], group: str, machine: str, path: str
) -> dict[str, Any]:
    """A pull copies one file from exactly one machine, named: not ``all``, a comma list
    or a KEY=VALUE selector (400 for those, 404 for a name the group does not have,
    like opening a stream)."""
    if isinstance(machine, str) and (machine.strip() == "*" or any(c in machine for c in ",=")):
        raise InvalidInput(
            f"a pull copies from one machine: give its name, not the target {machine!r}",
            field="machine",
        )
    check_name(machine, "machine")
    check_push_path(path)  # a pull's path: as a push's, no control characters
    g = live_group(tx, user["user_id"], group)
    m = tx.one(
        "SELECT name FROM machines WHERE group_id = ? AND name = ? AND state != ?",
        (g["id"], machine, MachineState.REVOKED.value),
    )
    if m is None:
        hint = ": a pull copies from one machine, give its name" if machine == "all" else ""
        raise NotFound(f"no machine {machine!r} in group {group!r}{hint}", field="machine")
    out = create_kind(
        tx, user, group, machine, lambda job_id: FileGet(job_id=job_id, path=path), {"path": path}
    )
    if out.get("targets") != [machine]:
        # A machine named "all" is also the target "every machine": not for a pull (the
        # error undoes the job, this transaction being rolled back).
        raise InvalidInput(
            f"cannot pull from machine {machine!r}: that name also means every machine",
            field="machine",
        )
    return out


def machine_may_read(tx: Tx, machine_id: str, sha: str) -> int:
    """A machine may download a blob only while a push of it to that machine is open."""
    row = tx.one(
        "SELECT b.size FROM job_targets t JOIN jobs j ON j.id = t.job_id "
        "JOIN groups g ON g.id = j.group_id JOIN blob_owners b "
        "ON b.user_id = g.user_id AND b.sha = j.blob "
        "WHERE t.machine_id = ? AND j.blob = ? AND t.status IN (?, ?, ?)",
        (machine_id, sha, *_OPEN),
    )
    if row is None:
        raise Forbidden("no open file transfer of that content to this machine")
    return int(row["size"])


def upload_slot(tx: Tx, machine_id: str, job_id: str, sha: str | None = None) -> dict[str, Any]:
    """Check that a machine may upload for pull job ``job_id``; return the job's user.

    A pull takes one upload: once its file is recorded, another upload is refused
    (409 ``already_uploaded``) before its body is stored, unless it declares the same
    SHA-256 (``sha``, from ``X-Content-SHA256``): the agent sending the same file again
    after it lost the answer to the first upload, which then succeeds again."""
    row = tx.one(
        "SELECT g.user_id, j.spec, t.blob FROM job_targets t JOIN jobs j ON j.id = t.job_id "
        "JOIN groups g ON g.id = j.group_id WHERE t.machine_id = ? AND t.job_id = ? "
        "AND t.status IN (?, ?, ?)",
        (machine_id, job_id, *_OPEN),
    )
    if row is None or '"type":"file.get"' not in row["spec"]:
        raise Forbidden("no open pull job for this machine")
    if row["blob"] is not None and row["blob"] != sha:
        raise _uploaded(job_id, row["blob"])
    return {"user_id": row["user_id"]}


def _uploaded(job_id: str, sha: str) -> Conflict:
    return Conflict(
        f"pull job {job_id} has its file already (sha256 {sha}): a pull takes one upload "
        "(only the same content may be sent again)",
        code="already_uploaded",
    )


def record_upload(
    tx: Tx, machine_id: str, job_id: str, sha: str, size: int, mode: int | None = None
) -> None:
    """Record the uploaded file of a pull (``upload_slot``'s rules, checked again: two
    uploads may have passed it at once; the first recorded wins). ``mode``: the file's
    mode the machine reported (checked, ``decode_file_mode``), kept in the job's spec
    (a pull has one target) as ``file_mode``, for ``pulled_blob``."""
    slot = upload_slot(tx, machine_id, job_id, sha)
    # Only if no other content was recorded meanwhile (the row is locked by this
    # statement: a concurrent upload's then sees the blob set, and changes nothing).
    changed = tx.execute(
        "UPDATE job_targets SET blob = ? WHERE job_id = ? AND machine_id = ? "
        "AND (blob IS NULL OR blob = ?)",
        (sha, job_id, machine_id, sha),
    )
    if changed != 1:
        row = tx.one(
            "SELECT blob FROM job_targets WHERE job_id = ? AND machine_id = ?",
            (job_id, machine_id),
        )
        raise _uploaded(job_id, row["blob"] if row else "?")
    add_blob_owner(tx, slot["user_id"], sha, size)
    if mode is not None:
        job = tx.one("SELECT spec FROM jobs WHERE id = ?", (job_id,))
        spec = json.loads(job["spec"]) if job else None
        if isinstance(spec, dict):
            tx.execute(
                "UPDATE jobs SET spec = ? WHERE id = ?",
                (dumps({**spec, "file_mode": mode}), job_id),
            )


def pulled_blob(tx: Tx, user_id: str, job_id: str) -> dict[str, Any]:
    row = tx.one(
        "SELECT t.blob, t.status, t.machine, b.size, j.spec FROM job_targets t "
        "JOIN jobs j ON j.id = t.job_id JOIN groups g ON g.id = j.group_id "
        "LEFT JOIN blob_owners b ON b.user_id = g.user_id AND b.sha = t.blob "
        "WHERE t.job_id = ? AND g.user_id = ?",
        (job_id, user_id),
    )
    if row is None:
        raise NotFound(f"no job {job_id!r}")
    if row["blob"] is None:
        raise NotFound(f"job {job_id} has no pulled file (status {row['status']})")
    out = {"sha256": row["blob"], "size": row["size"], "machine": row["machine"]}
    # The file's mode on the machine, when it reported one (an older agent does not).
    with contextlib.suppress(ValueError, TypeError, AttributeError, InvalidInput):
        mode = decode_file_mode(json.loads(row["spec"]).get("file_mode"))
        if mode is not None:
            out["mode"] = mode
    return out
