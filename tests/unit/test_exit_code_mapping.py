"""A remote exit code as a local process can exit with it: never 0 for a failure."""

from __future__ import annotations

import pytest

from cloudremotecontrol.master.client import worst_exit_code
from cloudremotecontrol.master.types import exit_code_of, shell_exit_code


@pytest.mark.parametrize(
    ("code", "shown"),
    [
        (0, 0),
        (1, 1),
        (3, 3),
        (255, 255),
        (256, 1),
        (512, 1),
        (3221225728, 1),  # a Windows NTSTATUS code: 0 modulo 256
        (3221225477, 1),
        (-9, 137),  # killed by signal 9, as a shell shows it
        (-1, 129),
        (-127, 255),
        (-128, 1),
        (-256, 1),
    ],
)
def test_shell_exit_code(code: int, shown: int) -> None:
    assert shell_exit_code(code) == shown


@pytest.mark.parametrize(
    ("status", "code", "rc"),
    [
        ("succeeded", 0, 0),
        ("failed", 3, 3),
        ("failed", 0, 1),
        ("failed", None, 1),
        ("failed", 256, 1),
        ("failed", 3221225728, 1),
        ("failed", -256, 1),
        ("failed", -9, 137),
        ("timed_out", None, 124),
        ("cancelled", None, 130),
        ("lost", None, 125),
    ],
)
def test_exit_code_of_a_target(status: str, code: int | None, rc: int) -> None:
    assert exit_code_of(status, code) == rc


def test_a_failed_target_is_never_the_worst_as_zero() -> None:
    results = {
        "a": {"status": "succeeded", "exit_code": 0},
        "b": {"status": "failed", "exit_code": 256},
    }
    assert worst_exit_code(results) == 1


@pytest.mark.parametrize(
    ("others", "rc"),
    [
        ([("failed", 4)], 4),  # the error budget spent on it: its code, not 125
        ([("failed", 4), ("timed_out", None)], 124),  # the worst of those that ran
        ([("cancelled", None)], 130),
        ([("succeeded", 0)], 125),  # skipped for no failure shown here: still 125
        ([], 125),
    ],
)
def test_a_skipped_target_counts_only_when_no_other_has_a_code(
    others: list[tuple[str, int | None]], rc: int
) -> None:
    results = {f"m{i}": {"status": s, "exit_code": c} for i, (s, c) in enumerate(others)}
    results["skipped"] = {"status": "skipped", "exit_code": None}
    assert worst_exit_code(results) == rc
