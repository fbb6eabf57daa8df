"""Projection head and L2-normalised prototypes shared by clustering objectives."""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import positive_int

_POSITIVE = "a positive int"
_INITS = ("trunc_normal", "pytorch")


class ProjectionHead(nn.Module):
    """MLP ``in_dim -> hidden_dims... -> out_dim`` with GELU between layers.

    The paper's head: hidden (2048, 2048), out 256. The authors' code used
    (1024, 1024, 512) hidden, out 256.

    ``init="trunc_normal"`` (default) draws the weights from trunc_normal(std=0.02) with
    zero biases; ``init="pytorch"`` keeps ``nn.Linear``'s default initialisation, as the
    authors' code does (it never re-initialises its head).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int] = (2048, 2048),
        out_dim: int = 256,
        init: Literal["trunc_normal", "pytorch"] = "trunc_normal",
    ):
        super().__init__()
        positive_int(in_dim, "in_dim (the backbone's embed_dim)", what=_POSITIVE)
        if isinstance(hidden_dims, (str, bytes)) or not isinstance(hidden_dims, Sequence):
            raise TypeError(f"hidden_dims must be a sequence of positive ints, e.g. (2048, 2048), got {hidden_dims!r}")
        for width in hidden_dims:
            positive_int(width, "every entry of hidden_dims (head_hidden_dims)", what=_POSITIVE)
        positive_int(out_dim, "out_dim (projection_dim)", what=_POSITIVE)
        if init not in _INITS:
            raise ValueError(f"init (head_init) must be 'trunc_normal' or 'pytorch', got {init!r}")
        dims = [in_dim, *hidden_dims, out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.init = init
        for m in self.mlp:
            if init == "trunc_normal" and isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., out_dim), L2-normalised."""
        return F.normalize(self.mlp(x), dim=-1)


class Prototypes(nn.Module):
    """K unit-norm prototype vectors; ``forward`` gives cosine scores in [-1, 1]."""

    def __init__(self, num_prototypes: int = 100, dim: int = 256):
        super().__init__()
        positive_int(num_prototypes, "num_prototypes", what=_POSITIVE)
        positive_int(dim, "dim (projection_dim)", what=_POSITIVE)
        self.weight = nn.Parameter(F.normalize(torch.randn(num_prototypes, dim), dim=-1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(..., dim) unit vectors -> (..., K) scores."""
        return z @ self.weight.t().to(z.dtype)

    @torch.no_grad()
    def normalize_(self) -> None:
        self.weight.copy_(F.normalize(self.weight, dim=-1))
