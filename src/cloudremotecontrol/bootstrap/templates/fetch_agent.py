"""crc-bootstrap helper: fetch the agent from the server and install it into a venv.

Embedded in the startup scripts that `crc bootstrap` prints (bash and PowerShell) and
run with the VM's own python3 (>= 3.10, standard library only), before any secret is
written or sent:

1. With a fingerprint: one TLS handshake that verifies nothing, then the SHA-256 of the
   certificate the server presented is compared with the pin. A mismatch stops here
   (exit 7), before the enrollment key is ever used. From then on exactly that
   certificate is the only trust anchor (as in cloudremotecontrol/tlspin.py).
2. Read ``/v1/agent/package.sha256``; if PREFIX/installed.json records that digest, the
   install is current: print ``unchanged VERSION`` and stop (a second run changes
   nothing).
3. Download ``/v1/agent/package``, check its SHA-256, make PREFIX/venv (``--without-pip``:
   nothing comes from PyPI, and Debian's python3 needs no python3-venv for it), unpack
   the package into the venv's site-packages, write a ``crc`` launcher, check that
   ``crc --version`` runs, and only then record the digest. Print ``changed VERSION``.

Transient failures (server not up yet, network still coming up at boot) are retried
until ``--wait`` seconds have passed; a pin or checksum mismatch is never retried.
Exit codes: 0 done, 2 usage or unsuitable Python, 6 server unreachable, 7 pin mismatch,
1 anything else. Messages go to stderr as ``crc-bootstrap: error: ...``.
"""

import argparse
import hashlib
import io
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
from urllib.parse import urlsplit

PIN_MISMATCH, UNREACHABLE, USAGE = 7, 6, 2


class Fatal(Exception):
    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


class Transient(Exception):
    pass


def log(text):
    sys.stderr.write("crc-bootstrap: " + text + "\n")
    sys.stderr.flush()


def normalize_pin(text):
    value = text.strip().lower()
    if value.startswith("sha256:"):
        value = value[len("sha256:"):]
    value = value.replace(":", "")
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise Fatal(f"invalid fingerprint {text!r}: expected sha256:<64 hex digits>", USAGE)
    return "sha256:" + value


def host_port(url):
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise Fatal(f"invalid server URL {url!r}: expected https://HOST[:PORT]", USAGE)
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def pinned_context(url, pin, timeout):
    """Check the server's certificate against ``pin``; return a context trusting it."""
    host, port = host_port(url)
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                probe.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise Transient(f"cannot reach {url}: {exc}") from None
    seen = "sha256:" + hashlib.sha256(der).hexdigest()
    if seen != pin:
        raise Fatal(f"TLS fingerprint mismatch: the server at {url} presented certificate "
                    f"{seen}, not the pinned {pin}: refusing to continue (wrong server, or "
                    "someone in the middle); nothing secret was sent", PIN_MISMATCH)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # the pin identifies the server, whatever address works
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.load_verify_locations(cadata=ssl.DER_cert_to_PEM_cert(der))
    return ctx


def get(url, ctx, timeout):
    req = urllib.request.Request(url, headers={"User-Agent": "crc-bootstrap"})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:  # noqa: S310
            return resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code == 429:
            raise Transient(f"{url} answered HTTP {exc.code}") from None
        hint = " (is the server older than this script?)" if exc.code == 404 else ""
        raise Fatal(f"{url} answered HTTP {exc.code}{hint}") from None
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        if isinstance(getattr(exc, "reason", None), ssl.SSLCertVerificationError):
            raise Fatal(f"TLS verification of {url} failed: {exc.reason}",
                        PIN_MISMATCH) from None
        raise Transient(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


def venv_paths(venv):
    if os.name == "nt":
        return os.path.join(venv, "Scripts", "python.exe"), os.path.join(venv, "Scripts")
    return os.path.join(venv, "bin", "python"), os.path.join(venv, "bin")


def make_venv(venv):
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


def site_packages(python):
    out = subprocess.run([python, "-I", "-c",
                          "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0 or not out.stdout.strip():
        raise Fatal(f"the venv's python does not run: {out.stderr.strip()}")
    return out.stdout.strip()


def top_level(names):
    tops = set()
    for name in names:
        if name.startswith("/") or "\\" in name or ".." in name.split("/"):
            raise Fatal(f"unsafe path {name!r} in the agent package")
        first = name.split("/", 1)[0]
        if first != "__main__.py":
            tops.add(first)
    return sorted(tops)


def write_launcher(bindir, python):
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


def install(prefix, data, digest, version):
    venv = os.path.join(prefix, "venv")
    record = os.path.join(prefix, "installed.json")
    python = make_venv(venv)
    site = site_packages(python)
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise Fatal("the agent package is not a valid zipapp") from None
    tops = top_level(zf.namelist())
    try:
        with open(record) as fh:
            old = json.load(fh).get("top_level", [])
    except (OSError, ValueError):
        old = []
    for name in sorted(set(old) | set(tops)):  # no stale modules from an older version
        path = os.path.join(site, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
    for info in zf.infolist():
        if info.filename != "__main__.py":
            zf.extract(info, site)
    _, bindir = venv_paths(venv)
    launcher = write_launcher(bindir, python)
    check = subprocess.run([python, "-I", "-m", "cloudremotecontrol", "--version"],
                           capture_output=True, text=True, check=False)
    if check.returncode != 0 or version not in check.stdout:
        detail = check.stderr.strip() or check.stdout.strip()
        raise Fatal(f"the installed agent does not run: {detail}")
    tmp = record + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"sha256": digest, "version": version, "top_level": tops,
                   "python": python, "launcher": launcher}, fh, indent=2)
    os.replace(tmp, record)


def installed_digest(prefix):
    try:
        with open(os.path.join(prefix, "installed.json")) as fh:
            info = json.load(fh)
    except (OSError, ValueError):
        return None
    python, _ = venv_paths(os.path.join(prefix, "venv"))
    return info.get("sha256") if os.path.exists(python) else None


def fetch(args):
    base = args.url.rstrip("/")
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
    version = filename[len("crc-agent-"):-len(".pyz")] if filename.startswith(
        "crc-agent-") and filename.endswith(".pyz") else "?"
    if installed_digest(args.prefix) == digest:
        return "unchanged", version
    log(f"downloading the agent {version} from {base}")
    data, _ = get(base + "/v1/agent/package", ctx, args.timeout)
    seen = hashlib.sha256(data).hexdigest()
    if seen != digest:
        raise Fatal(f"the downloaded agent package has sha256 {seen}, the server published "
                    f"{digest}: refusing to install it")
    os.makedirs(args.prefix, mode=0o755, exist_ok=True)
    install(args.prefix, data, digest, version)
    return "changed", version


def main(argv=None):
    parser = argparse.ArgumentParser(prog="crc-bootstrap-fetch")
    parser.add_argument("--url", required=True)
    parser.add_argument("--fingerprint", default="")
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--wait", type=float, default=600.0,
                        help="keep retrying an unreachable server this long (seconds)")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
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
            delay = min(30.0, 0.5 * 2 ** attempt) * random.uniform(0.5, 1.0)  # noqa: S311
            log(f"{exc}: retrying in {delay:.0f} s")
            time.sleep(delay)
            continue
        print(f"{status} {version}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
