"""Sinkhorn-Knopp balanced assignment in the log domain (fp32, DDP-aware)."""

from __future__ import annotations

import math

import torch

from .distributed import all_reduce_max, all_reduce_sum


def sinkhorn(
    scores: torch.Tensor,
    epsilon: float = 0.05,
    iterations: int = 10,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Equipartitioned soft assignment of rows to K prototypes (SwAV's Sinkhorn-Knopp).

    Solves the entropy-regularised transport between the rows of ``scores`` (uniform
    mass 1/n each) and K prototypes (1/K each), alternating column and row
    normalisation in the log domain, so it never overflows (plain ``exp(s / 0.05)``
    does in fp16/bf16). It runs in fp32 whatever the autocast state. Under
    torch.distributed the column sums and the row count are all-reduced, so the
    rows of every process form one global problem.

    Args:
        scores: (M, K) similarities (cosine, in [-1, 1]).
        epsilon: entropic regularisation (0.05 in the paper).
        iterations: number of column+row normalisation rounds.
        mask: optional (M,) bool; False rows take no part and get all-zero rows.
    Returns:
        (M, K) fp32 assignment; every used row sums to 1, every column to ~n/K.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be (M, K), got {tuple(scores.shape)}")
    with torch.autocast(device_type=scores.device.type, enabled=False):
        logits = scores.float() / epsilon
        num_prototypes = logits.shape[1]
        if mask is None:
            mask = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
        used = mask.unsqueeze(1)
        logits = logits.masked_fill(~used, float("-inf"))
        num_rows = all_reduce_sum(mask.sum().float())
        log_k = math.log(num_prototypes)
        for _ in range(iterations):
            logits = logits - (_global_column_logsumexp(logits) + log_k)
            row = torch.logsumexp(logits, dim=1, keepdim=True)
            logits = logits - torch.where(used, row, torch.zeros_like(row))
        # rows now sum to 1 (the transport plan times n)
        return torch.where(used, logits.exp(), torch.zeros_like(logits)) * (num_rows > 0)


def _global_column_logsumexp(logits: torch.Tensor) -> torch.Tensor:
    """log(sum over rows of exp(logits)) per column, over all processes: (1, K)."""
    if logits.shape[0] == 0:  # a process without rows still takes part in the all-reduces
        local = logits.new_full((1, logits.shape[1]), float("-inf"))
    else:
        local = logits.amax(dim=0, keepdim=True)
    peak = all_reduce_max(local)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    total = all_reduce_sum((logits - peak).exp().sum(dim=0, keepdim=True))
    return total.log() + peak


def plain_sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 10) -> torch.Tensor:
    """The authors' (SwAV's) plain-exp Sinkhorn-Knopp in the dtype of ``scores``.

    The reference :func:`sinkhorn` is checked against (tests) and the authors' step is
    timed with (benchmarks): ``exp(s / epsilon)`` overflows in half precision, which is
    why mosic works in the log domain. (M, K) -> (M, K), rows summing to 1.
    """
    q = torch.exp(scores / epsilon).t()  # (K, M)
    q /= q.sum()
    k, m = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= m
    return (q * m).t()
