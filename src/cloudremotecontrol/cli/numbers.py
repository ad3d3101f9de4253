"""Whole-number options: click's ``IntRange`` says ``'abc' is not a valid integer
range.`` of a value that is no number at all; these say ``is not a valid whole
number``, and click's range check (``0 is not in the range 1<=x<=255``) is kept."""

from __future__ import annotations

import click

__all__ = ["WholeNumber"]


class WholeNumber(click.IntRange):
    name = "whole number"
