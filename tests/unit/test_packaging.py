"""What the package promises about itself: the Python versions each part runs on, one
version reported everywhere, dependency ranges with a lock that pins every one of them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

from cloudremotecontrol import __version__

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "cloudremotecontrol"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _minimum_python(paths: list[Path]) -> str:
    """The oldest Python 3 that vermin finds every construct and stdlib name in ``paths``
    available in (annotations are not evaluated: every module defers them)."""
    run_vermin = "import sys; from vermin import main; sys.exit(main())"
    out = subprocess.run(
        [sys.executable, "-c", run_vermin, "--no-tips", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    m = re.search(r"Minimum required versions: (?:[~!]2, )?(3\.\d+)\n", out.stdout)
    assert m, out.stdout + out.stderr
    return m.group(1)


def test_everything_but_the_server_runs_on_python_3_10() -> None:
    """The agent (what the zipapp ships: a fresh VM's own python3), the CLI, the master and
    the providers need nothing newer than 3.10, as pyproject.toml's requires-python says."""
    assert PYPROJECT["project"]["requires-python"] == ">=3.10"
    parts = [p for p in SRC.iterdir() if p.name != "server" and p.name != "__pycache__"]
    assert Version(_minimum_python(parts)) <= Version("3.10")


def test_the_server_needs_python_3_11_and_says_so() -> None:
    """The server's floor is what its code needs (asyncio.TaskGroup), no lower and no
    higher than README and pyproject.toml state, and `crc server` checks it."""
    assert _minimum_python([SRC / "server"]) == "3.11"
    assert "server needs Python >= 3.11" in (ROOT / "README.md").read_text()
    assert "server needs Python >= 3.11" in (ROOT / "pyproject.toml").read_text()
    cli = (SRC / "cli" / "server_cmds.py").read_text()
    assert "sys.version_info < (3, 11)" in cli


def test_the_version_is_a_pep_440_version_with_a_changelog_section() -> None:
    """Between releases the version is a .dev one and CHANGELOG.md has [Unreleased];
    a release has its own dated section (see CHANGELOG.md, "Versions")."""
    version = Version(__version__)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    if version.is_devrelease:
        assert "\n## [Unreleased]\n" in changelog
    else:
        assert re.search(rf"\n## \[{re.escape(__version__)}\] - \d{{4}}-\d\d-\d\d\n", changelog)
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "cloudremotecontrol.__version__"
    }


def _direct_requirements() -> list[Requirement]:
    project = PYPROJECT["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra if not r.startswith("cloudremotecontrol[")]
    return reqs


def _pins(name: str) -> dict[str, str]:
    """``{requirement name: pinned version}`` of a constraints file (every marker's)."""
    pins: dict[str, list[str]] = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        spec = str(req.specifier)
        assert spec.startswith("==") and "," not in spec, f"{name}: not an exact pin: {line}"
        pins.setdefault(_norm(req.name), []).append(spec[2:])
    return {k: v for k, vs in pins.items() for v in vs}  # any one is fine for the check


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_dependencies_are_ranges_not_pins() -> None:
    """A library's users install it beside other packages: no exact pins in
    pyproject.toml (the pins are in constraints.txt)."""
    for req in _direct_requirements():
        assert not any(s.operator in ("==", "===") for s in req.specifier), req
        assert any(s.operator == ">=" for s in req.specifier), f"{req}: no lower bound"


@pytest.mark.parametrize("lock", ["constraints.txt", "constraints-lowest.txt"])
def test_the_lock_files_pin_every_dependency_within_its_range(lock: str) -> None:
    """constraints.txt (what bootstrap and CI install) and constraints-lowest.txt (the
    lower bounds CI tests) are up to date with pyproject.toml: `scripts/lock` writes both."""
    pins = _pins(lock)
    for req in _direct_requirements():
        version = pins.get(_norm(req.name))
        assert version is not None, (
            f"{lock} does not pin {req.name} (pyproject.toml asks for {req}): run scripts/lock"
        )
        assert req.specifier.contains(version, prereleases=True), (
            f"{lock} pins {req.name}=={version}, outside {req}: run scripts/lock"
        )
    if lock == "constraints-lowest.txt":
        for req in _direct_requirements():
            low = Version(next(s.version for s in req.specifier if s.operator == ">="))
            pinned = Version(pins[_norm(req.name)]).release[: len(low.release)]
            # The lowest release there is at or above the bound (e.g. 3.2 -> 3.2.1).
            assert pinned == low.release, (
                f"{lock}: {req.name} is tested at {pins[_norm(req.name)]}, not near its "
                f"lower bound {low}: run scripts/lock"
            )
