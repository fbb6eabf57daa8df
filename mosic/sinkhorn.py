"""Sinkhorn-Knopp balanced assignment in the log domain (fp32, DDP-aware)."""

from __future__ import annotations

import math

import torch

from .checks import positive_float, positive_int
from .distributed import all_reduce_max, all_reduce_sum, is_distributed


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
        epsilon: entropic regularisation, > 0 (0.05 in the paper).
        iterations: number of column+row normalisation rounds (an int >= 1).
        mask: optional (M,) bool on the device of ``scores``; False rows take no part and
            get all-zero rows.
    Returns:
        (M, K) fp32 assignment; every used row sums to 1, every column to ~n/K.
    Raises:
        TypeError, ValueError: malformed arguments (the message names the argument and the
            expected form). Non-finite scores are reported for CPU tensors in a single process
            only (the check would cost a host sync on GPUs).
    """
    _check_inputs(scores, epsilon, iterations, mask)
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


def _check_inputs(scores: object, epsilon: object, iterations: object, mask: object) -> None:
    """Fail fast, naming the argument and the expected form. Shape and dtype checks only,
    plus a finiteness check of CPU scores in a single process (free of host syncs)."""
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"sinkhorn: scores must be an (M, K) float tensor, got {type(scores).__name__}")
    if scores.ndim != 2 or not scores.is_floating_point() or scores.shape[1] < 1:
        raise ValueError(
            f"sinkhorn: scores must be an (M, K) float tensor with K >= 1 (M rows, K prototypes), "
            f"got {scores.dtype} {tuple(scores.shape)}"
        )
    positive_float(epsilon, "sinkhorn: epsilon", what="a finite number > 0 (0.05 in the paper)", type_error=True)
    positive_int(iterations, "sinkhorn: iterations", what="an int >= 1 (10 in the paper)", type_error=True)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (scores.shape[0],):
            got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"sinkhorn: mask must be None or an (M,) = ({scores.shape[0]},) bool tensor, got {got}")
        if mask.device != scores.device:
            raise ValueError(f"sinkhorn: mask must be on the device of scores ({scores.device}), got {mask.device}")
    if scores.device.type == "cpu" and not is_distributed():
        finite = torch.isfinite(scores).all(dim=1)
        if mask is not None:
            finite = finite | ~mask
        if not bool(finite.all()):
            raise ValueError(
                "sinkhorn: scores must be finite in every used row (cosine similarities in [-1, 1]); "
                f"got inf/nan in {int((~finite).sum())} of {scores.shape[0]} rows"
            )


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
