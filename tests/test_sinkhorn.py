import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from helpers.fuzz import FLOATS, FUZZ
from mosic.sinkhorn import plain_sinkhorn, sinkhorn


def reference_sinkhorn_float64(scores, epsilon, iterations):
    """SwAV's plain-exp Sinkhorn-Knopp in float64 (the authors' algorithm)."""
    return plain_sinkhorn(scores.double(), epsilon, iterations)


def cosine_scores(m, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(m, 16, generator=g), dim=1)
    p = torch.nn.functional.normalize(torch.randn(k, 16, generator=g), dim=1)
    return z @ p.t()


def test_marginals_converge_within_1e4():
    scores = cosine_scores(512, 32)
    q = sinkhorn(scores, epsilon=0.05, iterations=300)
    plan = q / q.shape[0]
    assert torch.allclose(plan.sum(1), torch.full((512,), 1 / 512), atol=1e-6)
    assert (plan.sum(0) - 1 / 32).abs().max() < 1e-4


def test_matches_float64_plain_exp_reference():
    scores = cosine_scores(300, 20, seed=1)
    ours = sinkhorn(scores, epsilon=0.05, iterations=10)
    ref = reference_sinkhorn_float64(scores, 0.05, 10)
    assert torch.allclose(ours.double(), ref, atol=1e-5)
    assert torch.equal(ours.argmax(1), ref.argmax(1))


def test_bf16_inputs_under_autocast_stay_finite():
    scores = cosine_scores(256, 100, seed=2)
    # plain exp(1 / 0.05) = e^20 overflows fp16 (max 65504): the reason for the log domain
    assert torch.isinf(torch.exp(scores.half() / 0.05)).any()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = sinkhorn(scores.bfloat16(), epsilon=0.05, iterations=10)
    assert q.dtype == torch.float32
    assert torch.isfinite(q).all()
    assert torch.allclose(q, sinkhorn(scores.bfloat16().float(), 0.05, 10), atol=1e-6)


def test_masked_rows_are_excluded():
    scores = cosine_scores(60, 6, seed=3)
    mask = torch.arange(60) % 3 != 0
    q = sinkhorn(scores, 0.05, 10, mask=mask)
    assert torch.equal(q[~mask], torch.zeros_like(q[~mask]))
    assert torch.allclose(q[mask], sinkhorn(scores[mask], 0.05, 10), atol=1e-6)
    assert torch.equal(sinkhorn(scores, 0.05, 10, mask=torch.zeros(60, dtype=torch.bool)), torch.zeros(60, 6))


def test_balances_a_collapsed_input():
    # every row prefers prototype 0: the plan must still spread rows over all prototypes
    scores = torch.zeros(40, 4)
    scores[:, 0] = 1.0
    scores += 0.01 * torch.arange(40).float().unsqueeze(1) * torch.tensor([0.0, 1.0, -1.0, 0.5])
    q = sinkhorn(scores, 0.05, 50)
    counts = torch.bincount(q.argmax(1), minlength=4)
    assert (counts > 0).all()
    assert math.isclose(float(q.sum()), 40.0, rel_tol=1e-5)


def test_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\(M, K\)"):
        sinkhorn(torch.zeros(2, 3, 4))


# ---- fuzzing (hypothesis, tests/helpers/fuzz.py)


@FUZZ
@given(
    m=st.integers(0, 40),
    k=st.integers(1, 12),
    epsilon=st.floats(0.02, 2.0),
    iterations=st.integers(1, 15),
    dtype=FLOATS,
    masked=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_sinkhorn_valid(m, k, epsilon, iterations, dtype, masked, seed):
    g = torch.Generator().manual_seed(seed)
    scores = (torch.rand(m, k, generator=g) * 2 - 1).to(dtype)
    mask = torch.rand(m, generator=g) < 0.7 if masked else None
    q = sinkhorn(scores, epsilon, iterations, mask)
    assert q.shape == (m, k) and q.dtype == torch.float32
    assert torch.isfinite(q).all() and (q >= 0).all()
    used = torch.ones(m, dtype=torch.bool) if mask is None else mask
    assert torch.allclose(q[used].sum(1), torch.ones(int(used.sum())), atol=1e-4)  # used rows sum to 1
    assert torch.equal(q[~used], torch.zeros(int((~used).sum()), k))  # the others are zero


@FUZZ
@given(
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=4),
    dtype=st.sampled_from([torch.float32, torch.int64, torch.bool, torch.uint8]),
    epsilon=st.one_of(st.floats(allow_nan=True), st.integers(-2, 2), st.text(max_size=2), st.none()),
    iterations=st.one_of(st.integers(-2, 3), st.floats(0, 3), st.booleans(), st.none()),
    mask_len=st.one_of(st.none(), st.integers(0, 5)),
)
def test_sinkhorn_invalid(shape, dtype, epsilon, iterations, mask_len):
    scores = torch.zeros(shape, dtype=dtype)
    mask = None if mask_len is None else torch.ones(mask_len, dtype=torch.bool)
    valid = (
        len(shape) == 2 and shape[1] >= 1 and dtype == torch.float32
        and isinstance(epsilon, (int, float)) and not isinstance(epsilon, bool) and math.isfinite(epsilon) and epsilon > 0
        and isinstance(iterations, int) and not isinstance(iterations, bool) and iterations >= 1
        and (mask_len is None or mask_len == shape[0])
    )  # fmt: skip
    if valid:
        assert sinkhorn(scores, epsilon, iterations, mask).shape == tuple(shape)
    else:
        with pytest.raises((ValueError, TypeError), match="sinkhorn: "):
            sinkhorn(scores, epsilon, iterations, mask)


# ---- malformed inputs fail fast, with a message naming the argument and the expected form


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"scores": [[0.1, 0.2]]}, TypeError, r"scores must be an \(M, K\) float tensor, got list"),
        ({"scores": torch.zeros(2, 3, 4)}, ValueError, r"scores must be an \(M, K\) float tensor .*got torch.float32 \(2, 3, 4\)"),
        ({"scores": torch.zeros(4, 3, dtype=torch.int64)}, ValueError, r"scores must be an \(M, K\) float .*torch.int64"),
        ({"scores": torch.zeros(4, 0)}, ValueError, r"scores must be an \(M, K\) float tensor with K >= 1 .*got torch.float32 \(4, 0\)"),
        ({"epsilon": 0.0}, ValueError, r"epsilon must be a finite number > 0 .*got 0.0"),
        ({"epsilon": -0.05}, ValueError, r"epsilon must be a finite number > 0"),
        ({"epsilon": math.nan}, ValueError, r"epsilon must be a finite number > 0 .*got nan"),
        ({"epsilon": "0.05"}, TypeError, r"epsilon must be a finite number > 0 .*got str"),
        ({"iterations": 0}, ValueError, r"iterations must be an int >= 1 .*got 0"),
        ({"iterations": 2.5}, TypeError, r"iterations must be an int >= 1 .*got float"),
        ({"iterations": True}, TypeError, r"iterations must be an int >= 1 .*got bool"),
        ({"mask": torch.ones(5, dtype=torch.bool)}, ValueError, r"mask must be None or an \(M,\) = \(4,\) bool tensor, got torch.bool \(5,\)"),
        ({"mask": torch.ones(4)}, ValueError, r"mask must be None or an \(M,\) = \(4,\) bool tensor, got torch.float32 \(4,\)"),
        ({"mask": [True] * 4}, ValueError, r"mask must be None or an \(M,\) = \(4,\) bool tensor, got list"),
    ],
)
def test_sinkhorn_rejects_malformed_arguments(kwargs, error, match):
    args = {"scores": torch.zeros(4, 3), "epsilon": 0.05, "iterations": 3, "mask": None, **kwargs}
    with pytest.raises(error, match="sinkhorn: " + match):
        sinkhorn(**args)


def test_sinkhorn_rejects_non_finite_used_rows_on_cpu():
    scores = torch.zeros(4, 3)
    scores[2, 1] = math.nan
    with pytest.raises(ValueError, match=r"sinkhorn: scores must be finite in every used row .*inf/nan in 1 of 4 rows"):
        sinkhorn(scores)
    mask = torch.tensor([True, True, False, True])  # the bad row takes no part: accepted
    q = sinkhorn(scores, mask=mask)
    assert torch.equal(q[2], torch.zeros(3)) and torch.allclose(q[mask].sum(1), torch.ones(3))
    assert sinkhorn(torch.zeros(0, 3)).shape == (0, 3)  # a process without rows (DDP)
