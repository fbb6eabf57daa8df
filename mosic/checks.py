"""Argument checks shared across mosic: one home for "is this a positive int" and friends.

Lightweight on purpose (standard library only, no torch or numpy import), so any module
can use it. ``bool`` is never accepted where a number is asked for (``True`` is an int
to Python, but ``grid_size=True`` is a bug), while NumPy scalars are (``np.int64`` is a
:class:`numbers.Integral`, ``np.float32`` a :class:`numbers.Real`).

Predicates return a ``bool``; checks return the value unchanged or raise. A check's
message reads ``"{name} must be {what}, got {value!r}"``; ``what`` defaults to the plain
requirement ("an int >= 1", "a finite number > 0") and callers may extend it with a
hint, e.g. ``positive_int(n, "sinkhorn: iterations", what="an int >= 1 (10 in the paper)")``.
With ``type_error=True`` a value of the wrong type raises :class:`TypeError` naming the
type (``"..., got float"``) and only an out-of-range value of the right type raises
:class:`ValueError`; by default both raise :class:`ValueError`.

    >>> positive_int(3, "grid_size")
    3
    >>> positive_int(True, "grid_size")
    Traceback (most recent call last):
    ...
    ValueError: grid_size must be an int >= 1, got True
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = [
    "is_int",
    "is_real",
    "is_finite_real",
    "int_at_least",
    "positive_int",
    "nonnegative_int",
    "positive_float",
    "nonnegative_float",
    "finite_real",
]


def is_int(value: Any) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A real number (int or float, Python or NumPy), not a bool; may be inf or nan."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_finite_real(value: Any) -> bool:
    """A real number, not a bool, neither inf nor nan."""
    return is_real(value) and math.isfinite(value)


def _fail(name: str, what: str, value: Any, type_error: bool, wrong_type: bool) -> None:
    if type_error and wrong_type:
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    raise ValueError(f"{name} must be {what}, got {value!r}")


def int_at_least(value: Any, name: str, minimum: int, *, what: str | None = None, type_error: bool = False) -> Any:
    """``value`` if it is an int (not a bool) >= ``minimum``; else raise (see the module doc)."""
    what = what or f"an int >= {minimum}"
    if not is_int(value):
        _fail(name, what, value, type_error, wrong_type=True)
    if value < minimum:
        _fail(name, what, value, type_error, wrong_type=False)
    return value


def positive_int(value: Any, name: str, *, what: str | None = None, type_error: bool = False) -> Any:
    """``value`` if it is an int >= 1 (not a bool): sizes, counts, widths."""
    return int_at_least(value, name, 1, what=what, type_error=type_error)


def nonnegative_int(value: Any, name: str, *, what: str | None = None, type_error: bool = False) -> Any:
    """``value`` if it is an int >= 0 (not a bool): offsets, trail lengths."""
    return int_at_least(value, name, 0, what=what, type_error=type_error)


def finite_real(value: Any, name: str, *, what: str = "a finite number", type_error: bool = False) -> Any:
    """``value`` if it is a finite real number (not a bool, inf or nan)."""
    if not is_real(value):
        _fail(name, what, value, type_error, wrong_type=True)
    if not math.isfinite(value):
        _fail(name, what, value, type_error, wrong_type=False)
    return value


def positive_float(value: Any, name: str, *, what: str = "a finite number > 0", type_error: bool = False) -> Any:
    """``value`` if it is a finite real number > 0 (ints allowed): temperatures, epsilons, rates."""
    finite_real(value, name, what=what, type_error=type_error)
    if value <= 0:
        _fail(name, what, value, type_error, wrong_type=False)
    return value


def nonnegative_float(value: Any, name: str, *, what: str = "a finite number >= 0", type_error: bool = False) -> Any:
    """``value`` if it is a finite real number >= 0 (ints allowed): loss weights, probabilities' floor."""
    finite_real(value, name, what=what, type_error=type_error)
    if value < 0:
        _fail(name, what, value, type_error, wrong_type=False)
    return value
