"""`crc run` joins a job's output into lines, holding line starts in bounded memory:
at most 64 Ki characters per machine and stream, at most 4 Mi over all of them, however
many machines send lines that never end."""

from __future__ import annotations

import random

import pytest

from cloudremotecontrol.cli.linejoin import BUDGET_CHARS, HOLD_CHARS, LineJoiner, Piece


def _joined(pieces: list[Piece]) -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    for machine, stream, text in pieces:
        out[(machine, stream)] = out.get((machine, stream), "") + text
    return out


def test_a_line_in_pieces_comes_out_whole() -> None:
    j = LineJoiner()
    assert j.feed("a", "stdout", "part") == []
    assert j.feed("b", "stdout", "other\n") == [("b", "stdout", "other\n")]
    assert j.feed("a", "stdout", "ial line\nnext") == [("a", "stdout", "partial line\n")]
    assert j.feed("a", "stdout", "\r") == []  # maybe half a CRLF
    assert j.feed("a", "stdout", "\n") == [("a", "stdout", "next\r\n")]
    assert j.feed("a", "stderr", "no end") == []
    assert j.flush("a") == [("a", "stderr", "no end")]
    assert j.held_chars == 0


def test_a_long_line_comes_out_in_pieces_of_the_hold_whatever_the_chunks() -> None:
    line = "x" * 300_000 + "\n"
    expected = [("a", "stdout", "x" * HOLD_CHARS)] * 4 + [("a", "stdout", "x" * 37_856 + "\n")]
    for size in (1000, 65_536, 100_000, 300_001):
        j = LineJoiner()
        out: list[Piece] = []
        for i in range(0, len(line), size):
            out += j.feed("a", "stdout", line[i : i + size])
            assert j.held_chars <= HOLD_CHARS
        assert out == expected, size
    # A line exactly as long as the hold is one line, not a piece and an empty line.
    j = LineJoiner()
    assert j.feed("a", "stdout", "y" * HOLD_CHARS + "\n") == [
        ("a", "stdout", "y" * HOLD_CHARS + "\n")
    ]


def test_a_thousand_machines_writing_lines_that_never_end_hold_at_most_the_budget() -> None:
    j = LineJoiner()
    sent: dict[tuple[str, str], str] = {}
    printed: list[Piece] = []
    most = 0
    for round_ in range(3):
        for n in range(1000):
            for stream in ("stdout", "stderr"):
                data = chr(ord("a") + round_) * 60_000  # no line end, ever
                sent[(f"m{n}", stream)] = sent.get((f"m{n}", stream), "") + data
                printed += j.feed(f"m{n}", stream, data)
                most = max(most, j.held_chars)
    assert most <= BUDGET_CHARS
    assert most > BUDGET_CHARS - 60_000  # the budget is used, not wasted
    printed += j.flush()
    assert j.held_chars == 0
    assert _joined(printed) == sent  # nothing lost, nothing repeated, in order
    assert max(len(text) for _, _, text in printed) <= HOLD_CHARS


@pytest.mark.parametrize("seed", range(20))
def test_random_output_is_printed_in_order_and_what_is_held_stays_bounded(seed: int) -> None:
    rnd = random.Random(seed)
    j = LineJoiner(hold=50, budget=400)
    alphabet = "ab\r\n\x0c\u2028é"
    sent: dict[tuple[str, str], str] = {}
    printed: list[Piece] = []
    for _ in range(2000):
        key = (f"m{rnd.randrange(30)}", rnd.choice(("stdout", "stderr")))
        data = "".join(rnd.choice(alphabet) for _ in range(rnd.randrange(1, 120)))
        sent[key] = sent.get(key, "") + data
        printed += j.feed(*key, data)
        assert j.held_chars <= 400
        if rnd.random() < 0.02:
            printed += j.flush(key[0])
    printed += j.flush()
    assert _joined(printed) == sent


def test_hold_must_be_below_the_budget() -> None:
    with pytest.raises(ValueError):
        LineJoiner(hold=10, budget=10)
