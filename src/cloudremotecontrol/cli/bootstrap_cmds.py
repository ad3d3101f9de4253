"""``crc bootstrap GROUP MACHINE --os linux|windows``: one machine's startup script."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import secrets
import stat
import sys
from pathlib import Path
from urllib.parse import urlsplit

import click

from ..errors import InvalidInput
from ..fslinks import file_kind, through_links
from .output import emit_json, json_option

# A well-formed enrollment key that is no machine's: what the script is checked with
# before a fresh key is asked for.
_PLACEHOLDER_KEY = "crck_" + "0" * 16 + "_" + "A" * 32


def _read_text(path: str, option: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"{option}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{option}: {path} is not UTF-8 text") from None


class _Output:
    """The script's file, made ready before anything is asked of the server: a new file
    of this user's, mode 0600, beside the file ``-o`` names, moved over it once the script
    is written - or removed, leaving what was there as it was, when no script is.

    The file named is never opened to write: one that exists (another user's, made in
    /tmp before this command ran) is replaced, not rewritten, so that nobody but this user
    can ever read the key from it. A symbolic link of this user's is followed (the file
    it leads to is replaced, the link stays), as ``crc pull`` does; another user's link
    and a dangling one are refused (``fslinks.through_links``). What is not a regular
    file (a pipe such as `-o >(...)`, /dev/stdout, /dev/null) is written as it is: it has
    no mode to set nor length to cut; a FIFO or a socket of another user's is refused."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.written = False
        self.fd = -1
        self.dir_fd = -1
        self.tmp: str | None = None
        self.target = path
        try:
            st: os.stat_result | None = os.stat(path)
        except FileNotFoundError:
            st = None  # no such file yet, or a dangling link (through_links says which)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise _cannot_write(path, exc) from None
            st = None  # a link in a loop: through_links says so
        self.regular = st is None or stat.S_ISREG(st.st_mode)
        if not self.regular:
            self._open_special(path)
            return
        try:
            self.target = through_links(path, "write")
        except InvalidInput as exc:
            raise InvalidInput(f"-o: {exc}") from None
        except OSError as exc:
            raise _cannot_write(path, exc) from None
        directory, name = os.path.split(self.target)
        directory = directory or "."
        try:
            if _AT:
                self.dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            dst = os.stat(name, dir_fd=self.dir_fd) if _AT else os.stat(self.target)
        except FileNotFoundError:
            dst = None
            if self.dir_fd < 0 and not os.path.isdir(directory):
                raise InvalidInput(
                    f"-o: cannot write {path}: there is no directory {directory}"
                ) from None
        except OSError as exc:
            self.close()
            raise _cannot_write(path, exc) from None
        if dst is not None and not stat.S_ISREG(dst.st_mode):  # made meanwhile
            self.close()
            raise InvalidInput(f"-o: cannot write {path}: it is {file_kind(dst.st_mode)}")
        if dst is not None and not _replaceable(dst, directory):
            self.close()
            raise InvalidInput(
                f"-o: {path} is another user's (uid {dst.st_uid}) in {directory}, where only "
                "its owner may replace it: the script holds the key, write it to a path of "
                "your own"
            )
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        for _ in range(100):
            tmp = f".{name}.crc-{secrets.token_hex(6)}"
            try:
                if _AT:
                    self.fd = os.open(tmp, flags, 0o600, dir_fd=self.dir_fd)
                else:
                    self.fd = os.open(os.path.join(directory, tmp), flags, 0o600)
            except FileExistsError:
                continue
            except OSError as exc:
                self.close()
                raise _cannot_write(path, exc) from None
            self.tmp = tmp
            break
        else:  # pragma: no cover - 100 random names all taken
            self.close()
            raise InvalidInput(f"-o: cannot write {path}: no temporary name is free")
        try:
            if hasattr(os, "fchmod"):  # not on Windows; the umask may have taken bits off
                os.fchmod(self.fd, 0o600)
        except OSError as exc:
            self.close()
            raise _cannot_write(path, exc) from None

    def _open_special(self, path: str) -> None:
        """A pipe, a device or a socket, opened as it is; one of another user's - a FIFO
        made in /tmp, a link to a device - is refused."""
        named = _check_special(path)
        try:
            self.fd = os.open(path, os.O_WRONLY)
            st = os.fstat(self.fd)
        except OSError as exc:
            self.close()
            raise _cannot_write(path, exc) from None
        if stat.S_ISREG(st.st_mode):  # replaced by a regular file meanwhile
            self.close()
            raise InvalidInput(f"-o: {path} was replaced while it was opened: run again")
        if (
            named
            and _foreign(st.st_uid)
            and (stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode))
        ):
            self.close()  # a FIFO of another user's made there meanwhile
            raise InvalidInput(_foreign_special(path, st))

    def write(self, script: str) -> None:
        try:
            with os.fdopen(self.fd, "w", newline="", encoding="utf-8") as fh:
                self.fd = -1
                fh.write(script)
            if self.tmp is not None:
                name = os.path.basename(self.target)
                if _AT:
                    os.rename(self.tmp, name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
                else:
                    directory = os.path.dirname(self.target) or "."
                    os.replace(os.path.join(directory, self.tmp), self.target)
                self.tmp = None
        except OSError as exc:
            raise InvalidInput(
                f"-o: cannot write {self.path}: {exc.strerror or exc} (the script holds the "
                "key: give --key with it, or run crc bootstrap again)"
            ) from None
        self.written = True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.tmp is not None:  # no script written: what -o names is left as it was
            with contextlib.suppress(OSError):
                if _AT:
                    os.unlink(self.tmp, dir_fd=self.dir_fd)
                else:
                    os.unlink(os.path.join(os.path.dirname(self.target) or ".", self.tmp))
            self.tmp = None
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1


# Files made and moved relative to their directory, opened once: a directory on the way
# that another user swaps for a link meanwhile cannot send them elsewhere (not on Windows).
_AT = os.open in os.supports_dir_fd and os.rename in os.supports_dir_fd


def _cannot_write(path: str, exc: OSError) -> InvalidInput:
    return InvalidInput(f"-o: cannot write {path}: {exc.strerror or exc}")


def _foreign(uid: int) -> bool:
    """Whether a file of ``uid`` is another user's (never on Windows: no owners there)."""
    return sys.platform != "win32" and uid != os.geteuid()


def _replaceable(st: os.stat_result, directory: str) -> bool:
    """Whether this user may move a file over ``st`` in ``directory``: not another user's
    file in a sticky directory (/tmp) of another user's, unless this user is root."""
    if not _foreign(st.st_uid) or os.geteuid() == 0:
        return True
    try:
        d = os.stat(directory)
    except OSError:
        return True  # the move says why
    return not (d.st_mode & stat.S_ISVTX) or not _foreign(d.st_uid)


def _foreign_special(path: str, st: os.stat_result) -> str:
    return (
        f"-o: {path} is {file_kind(st.st_mode)} of another user's (uid {st.st_uid}): the "
        "script holds the key, not written to it: write it to a path of your own"
    )


def _check_special(path: str) -> bool:
    """Refuse a link of another user's on the way to a pipe, device or socket (root's
    links are the system's: /dev/stdout), and a named FIFO or socket of another user's.
    False when the way ends at a link to ``pipe:[N]`` (/proc/self/fd/N): a pipe with no
    name, this process's own, whoever made it (the shell of `sudo crc ... | ...`)."""
    p = path
    for _ in range(40):
        try:
            st = os.lstat(p)
        except OSError:
            return False  # /proc/self/fd/N -> pipe:[N]: no file of anyone's
        if not stat.S_ISLNK(st.st_mode):
            if _foreign(st.st_uid) and (stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode)):
                raise InvalidInput(_foreign_special(path, st))
            return True
        target = os.path.join(os.path.dirname(p), os.readlink(p))
        if _foreign(st.st_uid) and st.st_uid != 0:
            raise InvalidInput(
                f"-o: {path} is a symbolic link of another user's (uid {st.st_uid}) to "
                f"{target}: not written through, write to the file's own path"
            )
        p = target
    raise InvalidInput(f"-o: {path} is a symbolic link in a loop")


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command()
@click.argument("group")
@click.argument("machine")
@click.option(
    "--os",
    "os_name",
    type=click.Choice(["linux", "windows"]),
    required=True,
    help="The machine's OS.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["shell", "cloud-init", "cmd", "powershell"]),
    help="linux: shell (default; also valid cloud-init user data) or cloud-init "
    "(#cloud-config); windows: cmd (default; a Vultr startup script) or "
    "powershell.",
)
@click.option(
    "--key",
    help="The machine's enrollment key, if you still have it. Default: "
    "issue a fresh one (the machine must be pending; its old key "
    "stops working).",
)
@click.option(
    "--key-file",
    type=click.Path(exists=True, dir_okay=False),
    help="Read the enrollment key from this file.",
)
@click.option("--key-ttl", help="With a fresh key: how long it stays valid (default 24h).")
@click.option("--url", help="Server URL as the machines reach it (default: your login's).")
@click.option("--fingerprint", help="Server certificate SHA-256 to pin (default: your login's).")
@click.option(
    "--then",
    "then_file",
    type=click.Path(exists=True, dir_okay=False),
    help="A provisioning script (bash on Linux, PowerShell on Windows) to run once "
    "the agent is up; the machine says ready only if it succeeds.",
)
@click.option(
    "--python-version",
    default=None,
    help="Windows: the python.org version installed when Python is missing.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Write the script to this file (mode 0600: it holds a key).",
)
@json_option
def bootstrap(
    group: str,
    machine: str,
    os_name: str,
    fmt: str | None,
    key: str | None,
    key_file: str | None,
    key_ttl: str | None,
    url: str | None,
    fingerprint: str | None,
    then_file: str | None,
    python_version: str | None,
    output: str | None,
    as_json: bool,
) -> None:
    """Print the startup script that turns a fresh VM into MACHINE of GROUP: it installs
    Python if needed, fetches the agent from the server (TLS pinned), enrolls and starts
    the agent as a service, then says ready. Paste it as the VM's startup script."""
    from ..bootstrap.scripts import DEFAULT_WINDOWS_PYTHON, BootstrapParams, render
    from ..master.client import Client
    from ..master.profile import load_profile
    from .master_cmds import _duration

    if key and key_file:
        raise InvalidInput("give --key or --key-file, not both")
    if key_file:
        key = _read_text(key_file, "--key-file").strip()
    then_script = _read_text(then_file, "--then") if then_file else None
    profile = load_profile()
    server_url = url or profile.url
    pin = fingerprint or profile.fingerprint
    ttl = _duration(key_ttl)

    def params(with_key: str) -> BootstrapParams:
        return BootstrapParams(
            server_url,
            pin,
            group,
            machine,
            with_key,
            then_script,
            python_version or DEFAULT_WINDOWS_PYTHON,
        )

    # Everything is checked, and the output opened, before a fresh key is issued: issuing
    # one makes the machine's old key stop working, so a mistake found afterwards would
    # leave the machine with a key nobody has.
    render(os_name, fmt, params(key if key is not None else _PLACEHOLDER_KEY))
    out = _Output(output) if output else None
    reissued = None
    try:
        if key is None:
            with Client(profile.url, profile.token, profile.fingerprint, profile.cert_pem) as c:
                reissued = c.machine_key(group, machine, ttl)
            key = str(reissued["key"])
        script = render(os_name, fmt, params(key))
        if out is not None:
            out.write(script)
    finally:
        if out is not None:
            out.close()
    if _loopback(server_url):
        click.echo(
            f"crc: warning: {server_url} is a loopback address, which a VM cannot "
            "reach: give --url with the server's public address",
            err=True,
        )
    if as_json:
        emit_json(
            {
                "group": group,
                "machine": machine,
                "os": os_name,
                "format": fmt or ("shell" if os_name == "linux" else "cmd"),
                "key_reissued": reissued is not None,
                "key_expires": reissued["key_expires"] if reissued else None,
                "output": output,
                "script": None if output else script,
            }
        )
    elif not output:
        click.echo(script, nl=False)
    else:
        mode = ": mode 0600" if out is not None and out.regular else ""
        click.echo(f"wrote {output} (holds the enrollment key of {machine}{mode})", err=True)
