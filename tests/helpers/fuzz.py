"""Settings shared by the property-based (hypothesis) tests of the public API.

The examples are derandomized: the same examples every run, without a seed or a database.
``MOSIC_FUZZ_EXAMPLES=2000`` gives a deeper (still deterministic) run; 50 examples per test
otherwise. Valid inputs must give outputs of the documented shape with finite values and the
documented invariants; invalid ones must raise ValueError/TypeError (or ConfigError naming the
field), never an error from deep inside torch.
"""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

#: MOSIC_FUZZ_EXAMPLES=2000 for a deeper (still deterministic) run
FUZZ = settings(
    derandomize=True,
    max_examples=int(os.environ.get("MOSIC_FUZZ_EXAMPLES", "50")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: the float dtypes inputs may come in
FLOATS = st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16])


def raises_readably(call) -> None:
    """``call()`` raises ValueError or TypeError (a readable error, not one from deep inside)."""
    with pytest.raises((ValueError, TypeError)):
        call()
