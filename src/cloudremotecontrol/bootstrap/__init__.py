"""Bootstrap: what turns a fresh VM into an enrolled machine.

``render`` fills the startup-script templates (bash, cloud-init, PowerShell, .cmd) for
one machine; ``package`` builds the agent zipapp that the server hands to VMs. Master
and server side only: the agent package itself leaves this subpackage out.
"""

from .scripts import BootstrapParams, render

__all__ = ["BootstrapParams", "render"]
