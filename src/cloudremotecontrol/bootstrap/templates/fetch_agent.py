"""crc-bootstrap helper: fetch the agent from the server and install it.

Embedded in the startup scripts that `crc bootstrap` prints (bash, PowerShell, .cmd) and
run with the VM's own python3 (>= 3.10, standard library only), before any secret is
written or sent:

1. With a fingerprint: one TLS handshake that verifies nothing, then the SHA-256 of the
   certificate the server presented is compared with the pin. A mismatch stops here
   (exit 7), before the enrollment key is ever used. From then on exactly that
   certificate is the only trust anchor (as in cloudremotecontrol/tlspin.py).
2. Read ``/v1/agent/package.sha256``; if PREFIX/installed.json records that digest (and
   the same Python), the install is current: print ``unchanged VERSION`` and stop (a
   second run changes nothing).
3. Download ``/v1/agent/package``, check its SHA-256, and unpack it (never run from PyPI)
   in one of two layouts (``--layout``, default ``auto``):

   * ``venv``: PREFIX/venv (``--without-pip``: Debian's python3 needs no python3-venv
     for it), the package in its site-packages, a ``crc`` launcher in its bin/Scripts.
     The default where the ``venv`` module exists, except on Windows.
   * ``site``: the package in the plain directory PREFIX/lib, which a ``crc-agent.pth``
     in this interpreter's site-packages adds to ``sys.path`` (``site.addsitedir``, so
     ``.pth`` files in PREFIX/lib work too); launcher PREFIX/bin/crc(.cmd). The default
     on Windows, where a venv's ``python.exe`` is a redirector that starts the real
     interpreter as a child (not what the Service Control Manager should start), and
     on a Python without ``venv`` (the embeddable one).

   Then ``crc --version`` must run, and only then the digest is recorded. Print
   ``changed VERSION``.
4. On Windows (or with ``--pywin32``): the service host needs pywin32, a binary package.
   If this Python cannot import it, the wheel for this Python comes from the server
   (``/v1/agent/wheels``: what the operator put in the server's ``DATA_DIR/wheels``,
   checked against its published SHA-256 over the same pinned connection); only if the
   server has none for this Python and architecture, ``pip install pywin32==PIN`` from
   PyPI (python.org's Python has pip); else a clear error.

Transient failures (server not up yet, network still coming up at boot) are retried
until ``--wait`` seconds have passed; a pin or checksum mismatch is never retried.
Exit codes: 0 done, 2 usage or unsuitable Python, 6 server unreachable, 7 pin mismatch,
1 anything else. Messages go to stderr as ``crc-bootstrap: error: ...``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import ipaddress
import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable
from email.message import Message
from typing import Any, Literal, overload
from urllib.parse import urlsplit

PIN_MISMATCH, UNREACHABLE, USAGE = 7, 6, 2


class Fatal(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Transient(Exception):
    pass


def log(text: str) -> None:
    sys.stderr.write("crc-bootstrap: " + text + "\n")
    sys.stderr.flush()


def normalize_pin(text: str) -> str:
    value = text.strip().lower()
    if value.startswith("sha256:"):
        value = value[len("sha256:") :]
    value = value.replace(":", "")
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise Fatal(f"invalid fingerprint {text!r}: expected sha256:<64 hex digits>", USAGE)
    return "sha256:" + value


def check_url(url: str) -> None:
    """Refuse what no crc server serves, before anything is fetched: another scheme than
    https, no host, a bad port, and plain http to anything but this computer (a server
    serves plain HTTP only with --insecure, on a loopback address; elsewhere the agent's
    code would come over the network unverified)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Fatal(f"invalid server URL {url!r}: {exc}", USAGE) from None
    if parts.scheme not in ("https", "http") or not parts.hostname or port == 0:
        raise Fatal(f"invalid server URL {url!r}: expected https://HOST[:PORT]", USAGE)
    host = parts.hostname
    try:
        loopback = host.lower() == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme == "http" and not loopback:
        raise Fatal(
            f"refusing plain http:// to {host}: the agent would come over the network "
            "unverified; use https:// (a server serves plain HTTP only with --insecure, on "
            "a loopback address)",
            USAGE,
        )


def host_port(url: str) -> tuple[str, int]:
    check_url(url)
    parts = urlsplit(url)
    assert parts.hostname is not None  # checked above
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def pinned_context(url: str, pin: str, timeout: float) -> ssl.SSLContext:
    """Check the server's certificate against ``pin``; return a context trusting it."""
    host, port = host_port(url)
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            probe.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise Transient(f"cannot reach {url}: {exc}") from None
    if der is None:
        raise Fatal(f"the server at {url} presented no certificate", PIN_MISMATCH)
    seen = "sha256:" + hashlib.sha256(der).hexdigest()
    if seen != pin:
        raise Fatal(
            f"TLS fingerprint mismatch: the server at {url} presented certificate "
            f"{seen}, not the pinned {pin}: refusing to continue (wrong server, or "
            "someone in the middle); nothing secret was sent",
            PIN_MISMATCH,
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # the pin identifies the server, whatever address works
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.load_verify_locations(cadata=ssl.DER_cert_to_PEM_cert(der))
    return ctx


@overload
def get(
    url: str, ctx: ssl.SSLContext | None, timeout: float, missing_ok: Literal[False] = False
) -> tuple[bytes, Message]: ...


@overload
def get(
    url: str, ctx: ssl.SSLContext | None, timeout: float, missing_ok: bool
) -> tuple[bytes | None, Message | None]: ...


def get(
    url: str, ctx: ssl.SSLContext | None, timeout: float, missing_ok: bool = False
) -> tuple[bytes | None, Message | None]:
    req = urllib.request.Request(url, headers={"User-Agent": "crc-bootstrap"})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:  # noqa: S310
            return resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        if missing_ok and exc.code == 404:
            return None, None
        if exc.code >= 500 or exc.code == 429:
            raise Transient(f"{url} answered HTTP {exc.code}") from None
        hint = " (is the server older than this script?)" if exc.code == 404 else ""
        raise Fatal(f"{url} answered HTTP {exc.code}{hint}") from None
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None)
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise Fatal(f"TLS verification of {url} failed: {reason}", PIN_MISMATCH) from None
        raise Transient(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


PYWIN32_PIN = "312"  # what `pip install` gets when the server offers no wheel
PYWIN32_IMPORT = "import win32service, win32serviceutil, servicemanager, win32api, win32event"


def venv_paths(venv: str) -> tuple[str, str]:
    if os.name == "nt":
        return os.path.join(venv, "Scripts", "python.exe"), os.path.join(venv, "Scripts")
    return os.path.join(venv, "bin", "python"), os.path.join(venv, "bin")


def has_venv() -> bool:
    try:
        import venv  # noqa: F401 -- absent from the embeddable Python, some distro builds
    except ImportError:
        return False
    return True


def choose_layout(layout: str) -> str:
    if layout == "auto":
        return "site" if os.name == "nt" or not has_venv() else "venv"
    if layout == "venv" and not has_venv():
        raise Fatal(
            f"this Python ({sys.executable}) has no venv module: use --layout site "
            "(the agent in a plain directory on its sys.path), or install the "
            "distribution's venv package",
            USAGE,
        )
    return layout


def make_venv(venv: str) -> str:
    python, _ = venv_paths(venv)
    if os.path.exists(python):
        return python
    import venv as venv_mod

    log(f"creating the virtual environment {venv}")
    try:
        venv_mod.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(venv)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise Fatal(f"cannot create the virtual environment {venv}: {exc}") from None
    return python


def site_packages(python: str) -> str:
    out = subprocess.run(
        [python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0 or not out.stdout.strip():
        raise Fatal(f"the venv's python does not run: {out.stderr.strip()}")
    return out.stdout.strip()


def pth_path() -> str:
    """The .pth in this interpreter's site-packages that puts PREFIX/lib on sys.path."""
    import sysconfig

    return os.path.join(sysconfig.get_paths()["purelib"], "crc-agent.pth")


def write_pth(lib: str) -> str:
    path = pth_path()
    text = f"import site; site.addsitedir({lib!r})\n"
    try:
        with open(path) as fh:
            if fh.read() == text:
                return path
    except OSError:
        pass
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as fh:
            fh.write(text)
        os.replace(path + ".tmp", path)
    except OSError as exc:
        raise Fatal(f"cannot write {path} (run as Administrator/root): {exc}") from None
    return path


def layout_paths(prefix: str, layout: str) -> tuple[str, str | None, str]:
    """(python, lib directory or None for a venv, launcher directory)."""
    if layout == "venv":
        python, bindir = venv_paths(os.path.join(prefix, "venv"))
        return python, None, bindir
    return sys.executable, os.path.join(prefix, "lib"), os.path.join(prefix, "bin")


def top_level(names: list[str]) -> list[str]:
    tops: set[str] = set()
    for name in names:
        if name.startswith("/") or "\\" in name or ".." in name.split("/"):
            raise Fatal(f"unsafe path {name!r} in the agent package")
        first = name.split("/", 1)[0]
        if first != "__main__.py":
            tops.add(first)
    return sorted(tops)


def precompile(site: str, tops: list[str]) -> None:
    """Byte-compile the agent for this Python (the venv's is the same interpreter).

    Otherwise the agent's first start compiles it: slower, and that process (the
    service, until the machine restarts) keeps the compiler's freed memory, 1.1-1.7 MiB
    more resident (bench/RESULTS.md, "Agent start-up and memory"). Best effort: a
    module left uncompiled is compiled when it is imported, as without this."""
    import compileall

    for name in tops:
        path = os.path.join(site, name)
        if os.path.isdir(path) and not name.endswith(".dist-info"):
            compileall.compile_dir(path, quiet=2)


def write_launcher(bindir: str, python: str) -> str:
    os.makedirs(bindir, exist_ok=True)
    if os.name == "nt":
        path = os.path.join(bindir, "crc.cmd")
        text = f'@"{python}" -m cloudremotecontrol %*\r\n'
    else:
        path = os.path.join(bindir, "crc")
        text = f'#!/bin/sh\nexec "{python}" -m cloudremotecontrol "$@"\n'
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as fh:
        fh.write(text)
    os.chmod(tmp, 0o755)  # noqa: S103 -- a program everyone may run
    os.replace(tmp, path)
    return path


def read_record(prefix: str) -> dict[str, Any]:
    try:
        with open(os.path.join(prefix, "installed.json")) as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def install(prefix: str, data: bytes, digest: str, version: str, layout: str) -> dict[str, Any]:
    python, lib, bindir = layout_paths(prefix, layout)
    if lib is None:  # the venv layout
        make_venv(os.path.join(prefix, "venv"))
        site = site_packages(python)
    else:
        site = lib
        os.makedirs(site, exist_ok=True)
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise Fatal("the agent package is not a valid zipapp") from None
    tops = top_level(zf.namelist())
    old = read_record(prefix).get("top_level", [])
    for name in sorted(set(old) | set(tops)):  # no stale modules from an older version
        path = os.path.join(site, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
    for info in zf.infolist():
        if info.filename != "__main__.py":
            zf.extract(info, site)
    precompile(site, tops)
    pth = write_pth(lib) if lib is not None else None
    launcher = write_launcher(bindir, python)
    check = subprocess.run(
        [python, "-I", "-m", "cloudremotecontrol", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode != 0 or version not in check.stdout:
        detail = check.stderr.strip() or check.stdout.strip()
        raise Fatal(f"the installed agent does not run: {detail}")
    return {
        "sha256": digest,
        "version": version,
        "top_level": tops,
        "layout": layout,
        "python": python,
        "site": site,
        "pth": pth,
        "launcher": launcher,
    }


def write_record(prefix: str, info: dict[str, Any]) -> None:
    record = os.path.join(prefix, "installed.json")
    with open(record + ".tmp", "w") as fh:
        json.dump(info, fh, indent=2)
    os.replace(record + ".tmp", record)


def installed_digest(prefix: str, layout: str) -> str | None:
    info = read_record(prefix)
    python, _, _ = layout_paths(prefix, layout)
    if info.get("layout", "venv") != layout or info.get("python") != python:
        return None  # another layout or interpreter: install again
    if not os.path.exists(python) or (info.get("pth") and not os.path.exists(info["pth"])):
        return None
    return info.get("sha256")


def wheel_tags() -> tuple[str, str]:
    """(python tag, platform tag) of this interpreter, e.g. ("cp312", "win_amd64")."""
    import sysconfig

    plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    plat = {"win32": "win32", "win_amd64": "win_amd64", "win_arm64": "win_arm64"}.get(plat, plat)
    return f"cp{sys.version_info[0]}{sys.version_info[1]}", plat


def pick_wheel(names: Iterable[str], project: str, pytag: str, plat: str) -> str | None:
    """The newest wheel of ``project`` among ``names`` that this interpreter can load."""
    best = None
    for name in names:
        parts = name[: -len(".whl")].split("-") if name.endswith(".whl") else []
        if len(parts) not in (5, 6) or parts[0].lower() != project:
            continue
        py, abi, platforms = parts[-3], parts[-2], parts[-1].split(".")
        if pytag not in py.split(".") or abi not in (pytag, "abi3", "none"):
            continue
        if plat not in platforms:
            continue
        key = tuple(int(x) if x.isdigit() else 0 for x in parts[1].split("."))
        if best is None or key > best[0]:
            best = (key, name)
    return best[1] if best else None


def can_import(python: str, statement: str) -> tuple[bool, str]:
    out = subprocess.run(
        [python, "-I", "-c", statement], capture_output=True, text=True, check=False
    )
    return out.returncode == 0, out.stderr.strip()[-300:]


def ensure_pywin32(
    base: str, ctx: ssl.SSLContext | None, timeout: float, python: str, site: str
) -> str:
    ok, _ = can_import(python, PYWIN32_IMPORT)
    if ok:
        return "present"
    pytag, plat = wheel_tags()
    body, _ = get(base + "/v1/agent/wheels", ctx, timeout, missing_ok=True)
    offered = {}
    if body is not None:
        try:
            offered = {w["filename"]: w["sha256"] for w in json.loads(body)["wheels"]}
        except (ValueError, KeyError, TypeError):
            raise Fatal(f"unexpected answer from {base}/v1/agent/wheels") from None
    name = pick_wheel(offered, "pywin32", pytag, plat)
    if name is not None:
        log(f"installing pywin32 ({name}) from {base}")
        data, _ = get(base + "/v1/agent/wheels/" + name, ctx, timeout)
        seen = hashlib.sha256(data).hexdigest()
        if seen != offered[name].lower():
            raise Fatal(
                f"the downloaded {name} has sha256 {seen}, the server published "
                f"{offered[name]}: refusing to install it"
            )
        try:
            zf = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile:
            raise Fatal(f"{name} from the server is not a valid wheel") from None
        for info in zf.infolist():
            top = info.filename.split("/", 1)[0]
            top_level([info.filename])  # refuses unsafe paths
            if not top.endswith(".data"):  # scripts (post-install) are not needed
                zf.extract(info, site)
        source = f"{name} from the server"
    else:
        log(
            f"the server offers no pywin32 wheel for {pytag}-{plat} (see its DATA_DIR/"
            f"wheels): installing pywin32=={PYWIN32_PIN} from PyPI with pip"
        )
        cmd = [
            python,
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--only-binary=:all:",
            "--upgrade",
            "--target",
            site,
            f"pywin32=={PYWIN32_PIN}",
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise Fatal(
                f"pywin32 (needed by the Windows service) is missing, the server "
                f"offers no wheel for {pytag}-{plat}, and pip could not install it: "
                f"{(out.stderr or out.stdout).strip()[-500:]}\nFix: put pywin32-"
                f"{PYWIN32_PIN}-{pytag}-{pytag}-{plat}.whl in the server's "
                "DATA_DIR/wheels (pip download pywin32 --only-binary=:all: "
                f"--platform {plat} --python-version {pytag[2]}.{pytag[3:]} -d "
                "DATA_DIR/wheels), then run this script again"
            )
        source = f"pywin32=={PYWIN32_PIN} from PyPI"
    ok, err = can_import(python, PYWIN32_IMPORT)
    if not ok:
        raise Fatal(f"pywin32 installed ({source}) but does not import: {err}")
    return source


def fetch(args: argparse.Namespace) -> tuple[str, str]:
    base = args.url.rstrip("/")
    check_url(base)
    layout = choose_layout(args.layout)
    ctx = None
    if urlsplit(base).scheme == "https":
        if args.fingerprint:
            ctx = pinned_context(base, normalize_pin(args.fingerprint), args.timeout)
        else:
            ctx = ssl.create_default_context()  # a real certificate: the system's CAs
    body, _ = get(base + "/v1/agent/package.sha256", ctx, args.timeout)
    fields = body.decode("ascii", "replace").split()
    if len(fields) != 2 or len(fields[0]) != 64:
        raise Fatal(f"unexpected answer from {base}/v1/agent/package.sha256")
    digest, filename = fields[0].lower(), fields[1]
    version = (
        filename[len("crc-agent-") : -len(".pyz")]
        if filename.startswith("crc-agent-") and filename.endswith(".pyz")
        else "?"
    )
    if installed_digest(args.prefix, layout) == digest:
        return "unchanged", version
    log(f"downloading the agent {version} from {base}")
    data, _ = get(base + "/v1/agent/package", ctx, args.timeout)
    seen = hashlib.sha256(data).hexdigest()
    if seen != digest:
        raise Fatal(
            f"the downloaded agent package has sha256 {seen}, the server published "
            f"{digest}: refusing to install it"
        )
    os.makedirs(args.prefix, mode=0o755, exist_ok=True)
    info = install(args.prefix, data, digest, version, layout)
    if args.pywin32:
        info["pywin32"] = ensure_pywin32(base, ctx, args.timeout, info["python"], info["site"])
        log(f"pywin32: {info['pywin32']}")
    write_record(args.prefix, info)  # last: a failed step above is retried next time
    return "changed", version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crc-bootstrap-fetch")
    parser.add_argument("--url", required=True)
    parser.add_argument("--fingerprint", default="")
    parser.add_argument("--prefix", required=True)
    parser.add_argument(
        "--wait",
        type=float,
        default=600.0,
        help="keep retrying an unreachable server this long (seconds)",
    )
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument(
        "--layout",
        choices=["auto", "venv", "site"],
        default="auto",
        help="a venv under PREFIX, or PREFIX/lib on this Python's sys.path",
    )
    parser.add_argument(
        "--pywin32",
        choices=["auto", "yes", "no"],
        default="auto",
        help="make sure pywin32 imports (auto: on Windows)",
    )
    args = parser.parse_args(argv)
    args.pywin32 = args.pywin32 == "yes" or (args.pywin32 == "auto" and os.name == "nt")
    os.umask(0o022)  # the agent's code is not secret: readable, like any installed program
    if sys.version_info < (3, 10):  # noqa: UP036 -- run by whatever python3 the VM has
        log(f"error: the agent needs Python >= 3.10, this is {sys.version.split()[0]}")
        return USAGE
    deadline = time.monotonic() + args.wait
    attempt = 0
    while True:
        try:
            status, version = fetch(args)
        except Fatal as exc:
            log("error: " + str(exc))
            return exc.code
        except Transient as exc:
            attempt += 1
            if time.monotonic() >= deadline:
                log(f"error: {exc} (gave up after {attempt} attempts)")
                return UNREACHABLE
            delay = min(30.0, 0.5 * 2**attempt) * random.uniform(0.5, 1.0)  # noqa: S311
            log(f"{exc}: retrying in {delay:.0f} s")
            time.sleep(delay)
            continue
        print(f"{status} {version}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
