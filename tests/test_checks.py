"""mosic.checks: the shared argument checks (bool is never an int, messages name the argument)."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mosic.checks import (
    finite_real,
    int_at_least,
    is_finite_real,
    is_int,
    is_real,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)


def test_predicates():
    assert is_int(3) and is_int(np.int64(3)) and is_int(-1)
    assert not is_int(True) and not is_int(np.bool_(True)) and not is_int(3.0) and not is_int("3")
    assert is_real(1) and is_real(0.5) and is_real(np.float32(0.5)) and is_real(math.inf)
    assert not is_real(False) and not is_real("1") and not is_real(None)
    assert is_finite_real(1e300) and not is_finite_real(math.nan) and not is_finite_real(-math.inf)


def test_int_checks_return_the_value_and_reject_bools():
    assert positive_int(1, "n") == 1 and positive_int(np.int32(7), "n") == 7
    assert nonnegative_int(0, "trail") == 0
    assert int_at_least(5, "k", 5) == 5
    with pytest.raises(ValueError, match=r"^grid_size must be an int >= 1, got True$"):
        positive_int(True, "grid_size")
    with pytest.raises(ValueError, match=r"^grid_size must be an int >= 1, got 0$"):
        positive_int(0, "grid_size")
    with pytest.raises(ValueError, match=r"^trail must be an int >= 0, got -1$"):
        nonnegative_int(-1, "trail")
    with pytest.raises(ValueError, match=r"^k must be an int >= 5, got 4$"):
        int_at_least(4, "k", 5)
    with pytest.raises(ValueError, match=r"got 2\.0$"):
        positive_int(2.0, "n")


def test_what_and_type_error_shape_the_message():
    with pytest.raises(ValueError, match=r"^widths must be a positive int, got 0$"):
        positive_int(0, "widths", what="a positive int")
    with pytest.raises(TypeError, match=r"^sinkhorn: iterations must be an int >= 1 \(10 in the paper\), got bool$"):
        positive_int(True, "sinkhorn: iterations", what="an int >= 1 (10 in the paper)", type_error=True)
    with pytest.raises(TypeError, match=r"got float$"):
        positive_int(2.5, "n", type_error=True)
    with pytest.raises(ValueError, match=r"got 0$"):  # right type, out of range: ValueError
        positive_int(0, "n", type_error=True)


def test_float_checks():
    assert positive_float(0.05, "epsilon") == 0.05 and positive_float(2, "epsilon") == 2
    assert nonnegative_float(0.0, "weight") == 0.0 and finite_real(-3.5, "x") == -3.5
    for bad in (0.0, -1.0, math.nan, math.inf, True, "0.1", None):
        with pytest.raises(ValueError, match=r"^temperature must be a finite number > 0, got "):
            positive_float(bad, "temperature")
    with pytest.raises(ValueError, match=r"^weight must be a finite number >= 0, got -0\.5$"):
        nonnegative_float(-0.5, "weight")
    with pytest.raises(ValueError, match=r"^x must be a finite number, got nan$"):
        finite_real(math.nan, "x")
    with pytest.raises(TypeError, match=r"^epsilon must be a finite number > 0, got str$"):
        positive_float("0.05", "epsilon", type_error=True)
    with pytest.raises(ValueError, match=r"^epsilon must be a finite number > 0, got nan$"):
        positive_float(math.nan, "epsilon", type_error=True)


def test_checks_import_no_torch_or_numpy():
    """Loaded on its own (mosic/__init__ imports torch), the module pulls in neither."""
    code = (
        "import importlib.util, sys; spec = importlib.util.spec_from_file_location('checks', 'mosic/checks.py'); "
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
        "print('torch' in sys.modules, 'numpy' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_no_copies_of_the_int_checks_are_left():
    """The ``isinstance(x, bool) or not isinstance(x, ...)`` idiom lives in mosic/checks.py only
    (files still to be converted are listed)."""
    import re

    root = Path(__file__).resolve().parents[1] / "mosic"
    pending = set()
    idiom = re.compile(
        r"isinstance\(([^,()]+),\s*bool\)\s*or\s+not\s+isinstance\(\1,"  # bool or not an int
        r"|isinstance\(([^,()]+),\s*(?:\([^()]*\)|[\w.]+)\)\s*and\s+not\s+isinstance\(\2,\s*bool\)"  # an int and not a bool
        r"|not\s+isinstance\(([^,()]+),\s*(?:\([^()]*\)|[\w.]+)\)\s*or\s+isinstance\(\3,\s*bool\)"  # not an int or a bool
    )
    found = sorted(
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if idiom.search(path.read_text()) and str(path.relative_to(root)) not in pending | {"checks.py"}
    )
    assert found == [], f"use mosic.checks instead of copies of the bool/int check in {found}"
