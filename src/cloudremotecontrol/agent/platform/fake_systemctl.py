"""A stand-in for ``systemctl`` where systemd does not run (containers, CI): a test double
of the service seam, used through ``CRC_SYSTEMCTL="python3 .../fake_systemctl.py"``.

It reads the real unit file that ``crc agent install`` wrote and does what systemd
would do with it, for the verbs the agent's Systemd manager uses (daemon-reload,
is-enabled, enable, disable [--now], is-active, start, stop, restart, reset-failed):

* ``start`` runs ``ExecStart=`` in a new session with systemd's clean environment
  (``PATH``, ``Environment=``, ``NOTIFY_SOCKET``, ``WATCHDOG_USEC``, plus the variables
  that lead to this stand-in, so the service's own systemctl calls reach it), output appended to
  a journal file, and for ``Type=notify`` waits for the real ``READY=1`` datagram on its
  own notify socket (failing if the process exits first or ``TimeoutStartSec=`` passes);
* state (enabled flag, main PID, journal, every call) lives in ``CRC_FAKE_SYSTEMD_STATE``.

Not emulated: restart on failure, the watchdog's kill, cgroups, dependencies, the
``[Install]`` symlinks. Standard library only (it runs under the VM's /usr/bin/python3).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

STATE = os.environ.get("CRC_FAKE_SYSTEMD_STATE", "/run/fake-systemd")
UNIT_DIR = os.environ.get("CRC_SYSTEMD_DIR", "/etc/systemd/system")
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def unit(name: str) -> dict[str, list[str]] | None:
    path = os.path.join(UNIT_DIR, name if name.endswith(".service") else name + ".service")
    service: dict[str, list[str]] = {}
    try:
        with open(path) as fh:
            section = None
            for raw in fh:
                line = raw.strip()
                if line.startswith("[") and line.endswith("]"):
                    section = line[1:-1]
                elif line and not line.startswith("#") and "=" in line and section == "Service":
                    key, _, value = line.partition("=")
                    service.setdefault(key.strip(), []).append(value.strip())
    except FileNotFoundError:
        return None
    return service


def _path(name: str, kind: str) -> str:
    return os.path.join(STATE, f"{name}.{kind}")


def main_pid(name: str) -> int | None:
    try:
        with open(_path(name, "pid")) as fh:
            pid = int(fh.read())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    try:  # a zombie (exited, not reaped) is not running
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                return None
    except OSError:
        return None
    return pid


def exec_argv(value: str) -> list[str]:
    # systemd unquoting is close to the shell's for what we write; undo %% and $$.
    return [a.replace("%%", "%").replace("$$", "$") for a in shlex.split(value)]


def seconds(value: str, default: float) -> float:
    try:
        return float(value.rstrip("s"))
    except (AttributeError, ValueError):
        return default


def start(name: str) -> int:
    if main_pid(name):
        return 0
    service = unit(name)
    if service is None:
        print(f"Failed to start {name}.service: Unit {name}.service not found.", file=sys.stderr)
        return 5
    env = {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8", "INVOCATION_ID": os.urandom(16).hex()}
    # A real service reaches the real systemctl; this one reaches this stand-in.
    for key in ("CRC_SYSTEMCTL", "CRC_FAKE_SYSTEMD_STATE", "CRC_SYSTEMD_DIR"):
        if key in os.environ:
            env[key] = os.environ[key]
    for item in service.get("Environment", []):
        for assignment in shlex.split(item):
            key, _, value = assignment.partition("=")
            env[key] = value
    notify = service.get("Type", ["simple"])[-1] == "notify"
    sock = None
    if notify:
        sock_path = _path(name, "notify")
        if os.path.exists(sock_path):
            os.unlink(sock_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(sock_path)
        env["NOTIFY_SOCKET"] = sock_path
        if "WatchdogSec" in service:
            env["WATCHDOG_USEC"] = str(int(seconds(service["WatchdogSec"][-1], 0) * 1e6))
    with open(_path(name, "journal"), "ab") as journal:
        proc = subprocess.Popen(
            exec_argv(service["ExecStart"][-1]),
            env=env,
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=journal,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    with open(_path(name, "pid"), "w") as fh:
        fh.write(str(proc.pid))
    if sock is None:
        return 0
    deadline = time.monotonic() + seconds(service.get("TimeoutStartSec", ["90"])[-1], 90)
    sock.settimeout(0.2)
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                print(
                    f"Job for {name}.service failed: the main process exited with "
                    f"{proc.returncode} before READY=1",
                    file=sys.stderr,
                )
                return 1
            try:
                data = sock.recv(4096).decode()
            except TimeoutError:
                continue
            with open(_path(name, "notified"), "a") as fh:
                fh.write(data.replace("\n", " ") + "\n")
            if "READY=1" in data.split("\n"):
                return 0
        print(f"Job for {name}.service failed: no READY=1 in time", file=sys.stderr)
        stop(name)
        return 1
    finally:
        sock.close()


def stop(name: str) -> int:
    pid = main_pid(name)
    if pid is None:
        return 0
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if main_pid(name) is None:
            return 0
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    return 0


def main(argv: list[str]) -> int:
    os.makedirs(STATE, exist_ok=True)
    with open(os.path.join(STATE, "calls.jsonl"), "a") as fh:
        fh.write(json.dumps(argv) + "\n")
    args = [a for a in argv if not a.startswith("--")]
    flags = {a for a in argv if a.startswith("--")}
    verb, names = (args[0], args[1:]) if args else ("", [])
    name = names[0].removesuffix(".service") if names else ""
    if verb in ("daemon-reload", "reset-failed"):
        return 0
    if verb == "is-enabled":
        return 0 if os.path.exists(_path(name, "enabled")) else 1
    if verb == "enable":
        if unit(name) is None:
            print(
                f"Failed to enable unit: Unit file {name}.service does not exist.", file=sys.stderr
            )
            return 1
        open(_path(name, "enabled"), "w").close()
        return start(name) if "--now" in flags else 0
    if verb == "disable":
        if os.path.exists(_path(name, "enabled")):
            os.unlink(_path(name, "enabled"))
        return stop(name) if "--now" in flags else 0
    if verb == "is-active":
        return 0 if main_pid(name) else 3
    if verb == "start":
        return start(name)
    if verb == "stop":
        return stop(name)
    if verb == "restart":
        stop(name)
        return start(name)
    print(f"fake systemctl: unsupported verb {verb!r}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
