"""What `crc run` says of a target's machine going offline (and back) before its job
ended: once per going, only for targets still waited for (``job_cmds._OfflineNotes``)."""

from __future__ import annotations

from typing import Any

import click
import pytest

from cloudremotecontrol.cli.job_cmds import _OfflineNotes
from cloudremotecontrol.cli.output import target_option

OFFLINE = (
    "crc: machine b went offline before its job ended; its result comes when it "
    "reconnects (Ctrl-C cancels the job, a second one stops waiting)\n"
)


class NoSibling:
    """A client that cannot make a client for the notes' thread: notes are fed by hand."""


def _notes(results: dict[str, dict[str, Any]]) -> _OfflineNotes:
    return _OfflineNotes(NoSibling(), ("lab", 7), ["a", "b"], results)


def test_offline_said_once_and_back_after_it(capsys):
    notes = _notes({})
    with notes:  # no client: no thread, nothing to stop
        for machine, state in [
            ("b", "offline"),
            ("b", "offline"),
            ("b", "ready"),
            ("b", "ready"),
            ("b", "offline"),
        ]:
            notes.saw(machine, state)
    err = capsys.readouterr().err
    assert err == OFFLINE + "crc: machine b is back online\n" + OFFLINE


def test_nothing_said_of_finished_targets_others_or_after_the_end(capsys):
    results: dict[str, dict[str, Any]] = {"a": {"status": "succeeded"}}
    notes = _notes(results)
    notes.saw("a", "offline")  # its job ended: nothing to wait for
    notes.saw("c", "offline")  # not a target
    notes.saw("b", "ready")  # back without having gone: nothing to say
    notes.saw("b", "revoked")
    with notes:
        pass
    notes.saw("b", "offline")  # the follow ended
    assert capsys.readouterr().err == ""


def test_target_all_stands_alone():
    for ok in ("all", "*", "a", "a,b", "role=db,zone=a", None):
        assert target_option(None, None, ok) == ok  # type: ignore[arg-type]

    for bad in ("all,a", "a,all", "a, all ", "*,a", "all,role=db"):
        with pytest.raises(click.BadParameter, match="stands alone"):
            target_option(None, None, bad)  # type: ignore[arg-type]
