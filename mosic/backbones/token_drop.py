"""Token dropping for a masked student: keep some patch tokens, run the blocks, put them back."""

from __future__ import annotations

import torch

from ..device import to_device


def kept_indices(
    token_mask: torch.Tensor, b: int, h: int, w: int, device: torch.device | None = None
) -> torch.Tensor:
    """Row-major indices (B, L_keep) of the patches with mask False, in increasing order.

    ``token_mask`` is (B, h, w) bool, True = drop; every image must keep the same count.
    The indices are computed where the mask lives and moved to ``device``: the trainer
    keeps its masks on the CPU, so the count check costs no GPU synchronisation.
    """
    if token_mask.shape != (b, h, w) or token_mask.dtype != torch.bool:
        raise ValueError(
            f"token_mask must be a bool tensor of shape (B, h, w) = {(b, h, w)}, "
            f"got {token_mask.dtype} {tuple(token_mask.shape)}"
        )
    if b == 0:
        keep = torch.zeros(0, h * w, dtype=torch.long)
        return keep if device is None else keep.to(device)
    kept = ~token_mask.reshape(b, h * w)
    counts = kept.sum(1)
    if not bool((counts == counts[0]).all()):
        raise ValueError("token_mask must drop the same number of tokens in every image")
    # stable sort puts kept positions first, in increasing order
    order = torch.argsort((~kept).to(torch.int8), dim=1, stable=True)
    keep = order[:, : int(counts[0])]
    return keep if device is None else to_device(keep, device)


def drop_tokens(x: torch.Tensor, keep: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """(B, P + h*w, D) -> (B, P + L_keep, D): the prefix tokens and the kept patches."""
    gather = keep.unsqueeze(-1).expand(-1, -1, x.shape[-1])
    return torch.cat([x[:, :num_prefix], torch.gather(x[:, num_prefix:], 1, gather)], dim=1)


def restore_tokens(x: torch.Tensor, keep: torch.Tensor, num_patches: int) -> torch.Tensor:
    """(B, L_keep, D) patch tokens -> (B, num_patches, D) with zeros where tokens were dropped."""
    full = x.new_zeros(x.shape[0], num_patches, x.shape[-1])
    return full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x)
