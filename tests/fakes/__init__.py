"""Test doubles for what the tests cannot reach: the Vultr API (``vultr_api``) and the VMs
it would boot (``vultr_boot``). Imported by tests as ``fakes.*`` (tests/ is on the path)."""
