"""Scenarios: a YAML file declaring machines and steps, run by ``crc up`` / ``crc down``.

``model`` parses and validates the file (errors name file, line and field), ``graph``
schedules the steps (``needs:``, parallel where allowed, retries), ``templates`` fills
``{{ machines.mysql.private_ip }}``, ``runner`` (``crc up``) and ``down`` (``crc down``)
drive the provider and the server.
"""

from .model import Scenario, ScenarioError, load_scenario, parse_scenario

__all__ = ["Scenario", "ScenarioError", "load_scenario", "parse_scenario"]
