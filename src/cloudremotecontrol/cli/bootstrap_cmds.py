"""``crc bootstrap GROUP MACHINE --os linux|windows``: one machine's startup script."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import stat
from pathlib import Path
from urllib.parse import urlsplit

import click

from ..errors import InvalidInput
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
    """The script's file, opened (mode 0600) before anything is asked of the server and
    left as it was, or removed if it was made here, when no script is written.

    A file that exists is made 0600 then too (it will hold the key), and rewritten whole
    when the script is written. What is not a regular file (a pipe such as `-o >(...)`,
    /dev/stdout, /dev/null) is written as it is: it has no mode to set nor length to cut,
    and trying would fail only once the fresh key had been issued."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.written = False
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self.made = True
        except FileExistsError:
            self.made = False
            try:
                self.fd = os.open(path, os.O_WRONLY)
            except OSError as exc:
                raise InvalidInput(f"-o: cannot write {path}: {exc.strerror or exc}") from None
        except OSError as exc:
            raise InvalidInput(f"-o: cannot write {path}: {exc.strerror or exc}") from None
        try:
            self.regular = stat.S_ISREG(os.fstat(self.fd).st_mode)
            if self.regular and not self.made and hasattr(os, "fchmod"):  # not on Windows
                os.fchmod(self.fd, 0o600)
        except OSError as exc:
            self.close()
            raise InvalidInput(f"-o: cannot write {path}: {exc.strerror or exc}") from None

    def write(self, script: str) -> None:
        try:
            if self.regular:
                os.ftruncate(self.fd, 0)
            with os.fdopen(self.fd, "w", newline="", encoding="utf-8") as fh:
                self.fd = -1
                fh.write(script)
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
        if self.made and not self.written:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


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
