"""Files as the commands that copy them see them: writing through a symbolic link, as
``cp`` does, without the traps of doing so as a privileged user (what ``crc push``, the
agent on the machine, and ``crc pull``, the master here, write when their destination
is a link); and what a file that is not a regular one is, for their messages."""

from __future__ import annotations

import errno
import os
import stat
import sys

from .errors import InvalidInput

__all__ = ["file_kind", "through_links"]


def through_links(dest: str, verb: str, where: str = "") -> str:
    """The file a ``verb`` (push, pull) to ``dest`` writes: ``dest`` itself, or, when it
    is a symbolic link, the file the link points to (as ``cp`` writes through a link), so
    that the link stays and its target gets the content. A dangling link is refused (as
    ``cp`` does), and so is a link that another user owns: a link planted in a
    directory everyone may write (/tmp) would turn the write into one to any file the
    writer may write (the agent runs as root) - or, pointing into a directory of that
    user's, which it can swap for a link meanwhile, to any file at all. A link of the
    writer's own user leads where that user chose, as the target's own path would.
    ``where``: said after a path in the errors (" on this machine")."""
    path = dest
    loop = f"{dest} is a symbolic link in a loop{where}"
    for _ in range(40):  # the kernel's own bound on links followed (ELOOP)
        link = _lstat(path)
        if link is None or not stat.S_ISLNK(link.st_mode):
            if path == dest:
                return path
            # Its directory as the kernel resolves it (a ``..`` after a linked one).
            return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        target = os.path.join(os.path.dirname(path), os.readlink(path))
        if sys.platform != "win32" and link.st_uid != os.geteuid():
            raise InvalidInput(
                f"{dest} is a symbolic link of another user's (uid {link.st_uid}) to "
                f"{target}: not written through, {verb} to the file's own path"
            )
        try:
            os.stat(target)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InvalidInput(loop) from None
            raise InvalidInput(
                f"{dest} is a symbolic link to {target}, which does not exist{where}: "
                f"{verb} to the file's own path, or remove the link"
            ) from None
        path = target
    raise InvalidInput(loop)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is (``st_mode``), for messages."""
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"
