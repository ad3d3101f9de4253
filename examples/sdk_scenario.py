"""A scenario as a Python script (docs/sdk.md): two machines are provisioned, learn
each other's address and report back, then everything is torn down.

    crc login ...  (or CRC_URL, CRC_TOKEN, CRC_FINGERPRINT)
    python examples/sdk_scenario.py

Its machines are agents on this computer; on a cloud, each VM's startup script
(`crc bootstrap GROUP MACHINE`) enrolls with the key instead of `start_agent`.
"""

import os
import sys
import tempfile

from cloudremotecontrol import Client
from cloudremotecontrol.master.localrun import AgentProcess

GROUP = os.environ.get("GROUP", "sdk-demo")


def start_agent(crc: Client, key: str, name: str) -> AgentProcess:
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])  # `crc`
    state = os.path.join(tempfile.mkdtemp(), name)
    return AgentProcess(state, crc.url, key, crc.fingerprint, env={"PATH": path}).start()


with Client.from_profile() as crc:
    group = crc.create_group(GROUP, ["db", "web"])
    agents = [start_agent(crc, m["key"], m["name"]) for m in group["machines"]]
    try:
        crc.wait_ready(GROUP, timeout=120, on_event=lambda ev: print("  ", ev.machine, ev.data))
        crc.kv_set(GROUP, "release", "v1")  # shared state: the master and the machines
        install = (
            'crc agent progress "installing $(crc agent kv get release)" --percent 50; '
            'crc agent kv set db/host "$(hostname)"; crc agent emit installed "{\\"ok\\": true}"'
        )
        result = crc.run_wait(GROUP, "db", command=install)
        print("install:", {m: r.status for m, r in result.results.items()})
        msg = crc.wait_message(GROUP, "installed", sender="db", timeout=60)
        print(f"{msg.sender} says {msg.type} {msg.body} (cursor {msg.cursor})")
        web = crc.run_wait(GROUP, "web", argv=["crc", "agent", "kv", "get", "db/host"])
        for ev in crc.events(GROUP, types=("job.output",)):
            if ev.job_id == web.job_id:
                print(f"[{ev.machine}] {ev.data['data'].strip()}")
        sys.exit(result.exit_code or web.exit_code)
    finally:
        crc.delete_group(GROUP)
        for agent in agents:
            agent.stop()
