"""A whole-number option given something that is no number says so in those words,
not click's "is not a valid integer range"; its range is still checked."""

from __future__ import annotations

import pytest

from cloudremotecontrol.cli import main as cli_main


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["events", "g", "--since", "abc"], "'abc' is not a valid whole number"),
        (["wait", "g", "--message", "x", "--since", "1.5"], "'1.5' is not a valid whole number"),
        (
            ["run", "g", "--to", "a", "--error-exit", "x", "--", "true"],
            "'x' is not a valid whole number",
        ),
        (
            ["run", "g", "--to", "a", "--error-exit", "0", "--", "true"],
            "0 is not in the range 1<=x<=255",
        ),
    ],
)
def test_a_whole_number_option_says_what_it_takes(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as ended:
        cli_main.main(argv)
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert said in err, err
    assert "integer range" not in err, err
    assert len(err.splitlines()) == 1, err
