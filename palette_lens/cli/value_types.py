"""argparse value types: whole numbers, fractions, weights and mixes, with errors a person reads."""

from __future__ import annotations

import argparse
import math


# ---------------------------------------------------------------------- argparse value types
# Each raises ArgumentTypeError with a message a person reads (argparse prints it after the option's name);
# none lets a ValueError through, which argparse would report with the function's name.
def integer(text: str) -> int:
    """argparse type: a whole number."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None


def number(text: str) -> float:
    """argparse type: a number."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0."""
    value = integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0."""
    value = number(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, not {text}")
    return value


def compose_weight(text: str) -> float:
    """argparse type: a composition weight, a finite number in (0, 2]."""
    value = number(text)
    if not math.isfinite(value) or not 0.0 < value <= 2.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 2], not {text}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number."""
    value = number(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
    return value


def mix_weights(text: str) -> tuple[float, float, float, float]:
    """argparse type: four sampling weights ``target:other:harmless:borderline`` (``,`` also separates)."""
    parts = text.replace(",", ":").split(":")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) and v >= 0 for v in values) or values[0] == 0:
        raise argparse.ArgumentTypeError(
            f"must be four non-negative weights target:other:harmless:borderline with target > 0, not {text!r}"
        )
    return values  # type: ignore[return-value]


def fraction(text: str) -> float:
    """argparse type: a number from 0 to 1."""
    value = number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value
