"""``crc bootstrap GROUP MACHINE --os linux|windows``: one machine's startup script."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

import click

from ..errors import InvalidInput
from .output import emit_json, json_option


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
        key = Path(key_file).read_text().strip()
    then_script = None
    if then_file:
        try:
            then_script = Path(then_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"cannot read {then_file}: {exc}") from None
    profile = load_profile()
    server_url = url or profile.url
    pin = fingerprint or profile.fingerprint
    reissued = None
    if key is None:
        with Client(profile.url, profile.token, profile.fingerprint, profile.cert_pem) as c:
            reissued = c.machine_key(group, machine, _duration(key_ttl))
        key = str(reissued["key"])
    params = BootstrapParams(
        server_url, pin, group, machine, key, then_script, python_version or DEFAULT_WINDOWS_PYTHON
    )
    script = render(os_name, fmt, params)
    if _loopback(server_url):
        click.echo(
            f"crc: warning: {server_url} is a loopback address, which a VM cannot "
            "reach: give --url with the server's public address",
            err=True,
        )
    if output:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", newline="") as fh:
            fh.write(script)
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
        click.echo(f"wrote {output} (holds the enrollment key of {machine}: mode 0600)", err=True)
