"""Content-addressed file storage on the server's disk (``DATA_DIR/blobs``).

Files are streamed to a temporary file while hashed, then renamed to
``blobs/<sha[:2]>/<sha>``: a blob is either complete and verified or absent. The same
content is stored once, whoever uploads it; who may use a blob is recorded in the
database (``blob_owners``), so knowing a hash never grants access to its content.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from ..errors import InvalidInput, TooLarge

__all__ = ["BlobStore", "check_sha256"]

_SHA = re.compile(r"^[0-9a-f]{64}$")


def check_sha256(value: str) -> str:
    if not _SHA.fullmatch(value or ""):
        raise InvalidInput(f"invalid sha256 {value!r}: expected 64 lowercase hex digits",
                           field="sha256")
    return value


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        check_sha256(sha)
        return self.root / sha[:2] / sha

    def exists(self, sha: str) -> bool:
        return self.path(sha).is_file()

    async def put(self, chunks: AsyncIterator[bytes], expected_sha: str | None,
                  limit: int) -> tuple[str, int]:
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
                raise InvalidInput(f"content hash {sha} does not match {expected_sha}: "
                                   "upload interrupted or corrupted", code="hash_mismatch")
            final = self.path(sha)
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)
            return sha, size
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
