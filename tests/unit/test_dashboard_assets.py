"""The dashboard's committed browser assets are what the lock file says, and its own
code keeps to text-only rendering (the XSS test in a browser proves it; this catches a
regression before any browser starts)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import cloudremotecontrol.server.dashboard as dashboard

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(dashboard.__file__).parent
VENDOR = PACKAGE / "static" / "vendor"


def test_vendored_assets_match_the_lock_file_and_their_checksums():
    manifest = json.loads((VENDOR / "MANIFEST.json").read_text())
    lock = json.loads((ROOT / "web" / "package-lock.json").read_text())
    wanted = json.loads((ROOT / "web" / "package.json").read_text())["dependencies"]
    assert manifest, "no vendored asset listed"
    assert {e["package"] for e in manifest.values()} == set(wanted)
    for name, entry in manifest.items():
        locked = lock["packages"][f"node_modules/{entry['package']}"]
        assert entry["version"] == locked["version"] == wanted[entry["package"]], name
        data = (VENDOR / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
    on_disk = {p.name for p in VENDOR.iterdir()} - {"MANIFEST.json"}
    assert on_disk == set(manifest), "a vendored file without a manifest entry"


def test_templates_never_mark_text_safe_and_scripts_never_parse_html():
    for template in (PACKAGE / "templates").glob("*.html"):
        text = template.read_text()
        assert "|safe" not in text.replace(" ", ""), template.name
        assert "autoescape false" not in text, template.name
        # No inline script or handler (the CSP would block them anyway): only
        # <script src=...> and the JSON data island.
        for tag in re.findall(r"<script\b[^>]*>", text):
            assert "src=" in tag or 'type="application/json"' in tag, (template.name, tag)
        assert not re.search(r"\son[a-z]+\s*=", text), template.name
        assert "style=" not in text, template.name
    code = (PACKAGE / "static" / "dashboard.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in code, sink
    assert "new Function" not in code


def test_json_the_dashboard_shows_writes_a_lone_surrogate_as_its_escape() -> None:
    """Text an older server kept (a lone surrogate, which no UTF-8 page can carry) is
    shown as its escape rather than failing the page."""
    from cloudremotecontrol.server.dashboard import views

    value = {"k": "a\ud800b", "é": "日本"}
    for shown in (views._pretty(value), views._compact(value)):
        shown.encode("utf-8")  # a page can carry it
        assert "a\\ud800b" in shown and "日本" in shown and "é" in shown
