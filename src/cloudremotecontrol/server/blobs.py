"""Content-addressed file storage on the server's disk (``DATA_DIR/blobs``).

Files are streamed to a temporary file while hashed, then renamed to
``blobs/<sha[:2]>/<sha>``: a blob is either complete and verified or absent. The same
content is stored once, whoever uploads it; who may use a blob is recorded in the
database (``blob_owners``), so knowing a hash never grants access to its content.

With ``shared`` (the PostgreSQL store of several replicas) the content also goes into
the database in 1 MiB chunks (ops/blobdb.py) before the upload is answered, and a
replica that lacks a blob on its disk fetches it from there (checking its SHA-256) the
first time it serves it: replicas need no shared filesystem.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from ..errors import InvalidInput, NotFound, TooLarge
from .ops import blobdb
from .store.base import Store

__all__ = ["BlobStore", "check_sha256"]

CHUNK = 1 << 20

_SHA = re.compile(r"^[0-9a-f]{64}$")


def check_sha256(value: str) -> str:
    if not _SHA.fullmatch(value or ""):
        raise InvalidInput(
            f"invalid sha256 {value!r}: expected 64 lowercase hex digits", field="sha256"
        )
    return value


def _check_writable(root: Path) -> None:
    """Make ``root`` and ``root/tmp`` and try a file in each (as uploads make them): one
    that cannot be used (a file in its place, no permission, a read-only file system)
    is one line naming it (InvalidInput, exit 2) before the server starts, not an
    upload's traceback."""
    try:
        (root / "tmp").mkdir(parents=True, exist_ok=True)
        for where in (root, root / "tmp"):
            with tempfile.TemporaryFile(dir=where):
                pass
    except OSError as exc:
        raise InvalidInput(
            f"cannot use the file store {root}: {exc.strerror or exc}: check the path and "
            "its permissions"
        ) from None


class BlobStore:
    def __init__(self, root: Path, shared: Store | None = None) -> None:
        self.root = Path(root)
        self.shared = shared
        _check_writable(self.root)
        # Content being uploaded here and not yet given its owner: never dropped as
        # unowned meanwhile (``held``, ``hold``).
        self._held: Counter[str] = Counter()

    @contextlib.contextmanager
    def hold(self, sha: str | None) -> Iterator[None]:
        """While an upload of ``sha`` is stored and its owner recorded (None: unknown
        before the body ends; then nothing is held)."""
        if sha is None:
            yield
            return
        self._held[sha] += 1
        try:
            yield
        finally:
            self._held[sha] -= 1
            if not self._held[sha]:
                del self._held[sha]

    def held(self, sha: str) -> bool:
        return sha in self._held

    def path(self, sha: str) -> Path:
        check_sha256(sha)
        return self.root / sha[:2] / sha

    async def exists(self, sha: str) -> bool:
        """Whether the content is stored (with replicas: in the database)."""
        if self.shared is not None:
            return await self.shared.read(blobdb.blob_info, check_sha256(sha)) is not None
        return self.path(sha).is_file()

    async def local_path(self, sha: str) -> Path:
        """The blob on this server's disk, fetched from the database first if it is only
        there (another replica took the upload); NotFound if it is nowhere."""
        final = self.path(sha)
        if final.is_file():
            return final
        shared = self.shared
        info = await shared.read(blobdb.blob_info, sha) if shared else None
        if shared is None or info is None:
            raise NotFound(f"no content {sha} on this server")
        size, chunks = info

        async def from_database() -> AsyncIterator[bytes]:
            for n in range(chunks):
                data = await shared.read(blobdb.blob_chunk, sha, n)
                if data is None:
                    raise NotFound(f"content {sha} is incomplete in the database")
                yield data

        # Stored exactly like an upload: hashed on the way, renamed only if it matches.
        await self.put(from_database(), sha, size)
        return final

    async def _share(self, sha: str, size: int) -> None:
        """Copy a verified local blob into the database (once)."""
        assert self.shared is not None
        if await self.shared.read(blobdb.blob_info, sha) is not None:
            return
        n = 0
        with open(self.path(sha), "rb") as fh:
            while data := fh.read(CHUNK):
                await self.shared.write(blobdb.blob_put_chunk, sha, n, data)
                n += 1
        await self.shared.write(blobdb.blob_complete, sha, size, n)

    async def sweep(self, store: Store, older_than: float) -> int:
        """Remove from this server's disk content last written before ``older_than``
        (a Unix time) that nobody owns any more (ops/retention.py); return how many."""
        from .ops.retention import orphan_blobs

        old: list[str] = []
        for sub in self.root.iterdir():
            if sub.name == "tmp" or not sub.is_dir():
                continue
            for f in sub.iterdir():
                with contextlib.suppress(OSError):
                    if _SHA.fullmatch(f.name) and f.stat().st_mtime < older_than:
                        old.append(f.name)
        removed = 0
        for i in range(0, len(old), 500):
            for sha in await store.read(orphan_blobs, old[i : i + 500]):
                path = self.path(sha)
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime < older_than:  # not uploaded again meanwhile
                        path.unlink()
                        removed += 1
        return removed

    async def put(
        self, chunks: AsyncIterator[bytes], expected_sha: str | None, limit: int
    ) -> tuple[str, int]:
        """Store a stream; return ``(sha256, size)``. Refuses a stream whose hash differs
        from ``expected_sha`` or that grows past ``limit`` bytes (nothing is kept)."""
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise TooLarge(f"file over the limit of {limit} bytes")
                    digest.update(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            sha = digest.hexdigest()
            if expected_sha is not None and sha != expected_sha:
                raise InvalidInput(
                    f"content hash {sha} does not match {expected_sha}: "
                    "upload interrupted or corrupted",
                    code="hash_mismatch",
                )
            final = self.path(sha)
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)
            if self.shared is not None:
                await self._share(sha, size)
            return sha, size
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
