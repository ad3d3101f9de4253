"""A Ctrl-C that Python wraps is still a Ctrl-C: on 3.11, one landing in a class's
``__set_name__`` while a command's module loads (``ipaddress``'s ``cached_property``)
comes out as a RuntimeError *from* the KeyboardInterrupt. crc says ``interrupted`` and
exits 130 for it, as for any Ctrl-C, and lets a RuntimeError of its own pass."""

from __future__ import annotations

import sys
import types

import pytest

from cloudremotecontrol.cli import entry
from cloudremotecontrol.cli import main as cli_main


def _wrapped_ctrl_c() -> RuntimeError:
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as ki:
            raise RuntimeError("Error calling __set_name__ on 'cached_property'") from ki
    except RuntimeError as exc:
        return exc


def test_interruption_finds_the_ctrl_c_behind_a_wrapper() -> None:
    wrapped = _wrapped_ctrl_c()
    assert isinstance(entry.interruption(wrapped), KeyboardInterrupt)
    assert entry.interruption(RuntimeError("a fault")) is None
    looped = RuntimeError("a")
    looped.__cause__ = RuntimeError("b")
    looped.__cause__.__cause__ = looped  # a cycle ends the search, it does not hang
    assert entry.interruption(looped) is None


def test_a_wrapped_ctrl_c_while_a_command_loads_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_main.cli, "commands", {})  # `group` not loaded yet

    def cut_short(name: str) -> types.ModuleType:
        raise _wrapped_ctrl_c()

    monkeypatch.setattr(cli_main.importlib, "import_module", cut_short)
    with pytest.raises(SystemExit) as ended:
        cli_main.main(["group", "list"])
    assert ended.value.code == 130
    err = capsys.readouterr().err
    assert err.strip() == "crc: interrupted", err


def test_a_runtime_error_of_its_own_is_not_taken_for_a_ctrl_c(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli_main.cli, "commands", {})

    def broken(name: str) -> types.ModuleType:
        raise RuntimeError("a fault")

    monkeypatch.setattr(cli_main.importlib, "import_module", broken)
    with pytest.raises(RuntimeError, match="a fault"):
        cli_main.main(["group", "list"])


class _CutShort(types.ModuleType):
    def __getattr__(self, name: str) -> object:
        raise _wrapped_ctrl_c()


def test_a_wrapped_ctrl_c_while_crc_loads_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "cloudremotecontrol.cli.main", _CutShort("main"))
    with pytest.raises(SystemExit) as ended:
        entry.main()
    assert ended.value.code == 130
    assert capsys.readouterr().err == "crc: interrupted\n"
