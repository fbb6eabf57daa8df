import math

import pytest
import torch

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
