"""Projection head and L2-normalised prototypes shared by clustering objectives."""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """MLP ``in_dim -> hidden_dims... -> out_dim`` with GELU between layers.

    The paper's head: hidden (2048, 2048), out 256. The authors' code used
    (1024, 1024, 512) hidden, out 256.
    """

    def __init__(self, in_dim: int, hidden_dims: Sequence[int] = (2048, 2048), out_dim: int = 256):
        super().__init__()
        _check_width("in_dim (the backbone's embed_dim)", in_dim)
        if isinstance(hidden_dims, (str, bytes)) or not isinstance(hidden_dims, Sequence):
            raise TypeError(f"hidden_dims must be a sequence of positive ints, e.g. (2048, 2048), got {hidden_dims!r}")
        for width in hidden_dims:
            _check_width("every entry of hidden_dims (head_hidden_dims)", width)
        _check_width("out_dim (projection_dim)", out_dim)
        dims = [in_dim, *hidden_dims, out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., out_dim), L2-normalised."""
        return F.normalize(self.mlp(x), dim=-1)


class Prototypes(nn.Module):
    """K unit-norm prototype vectors; ``forward`` gives cosine scores in [-1, 1]."""

    def __init__(self, num_prototypes: int = 100, dim: int = 256):
        super().__init__()
        _check_width("num_prototypes", num_prototypes)
        _check_width("dim (projection_dim)", dim)
        self.weight = nn.Parameter(F.normalize(torch.randn(num_prototypes, dim), dim=-1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(..., dim) unit vectors -> (..., K) scores."""
        return z @ self.weight.t().to(z.dtype)

    @torch.no_grad()
    def normalize_(self) -> None:
        self.weight.copy_(F.normalize(self.weight, dim=-1))


def _check_width(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_positive(name: str, value: object) -> None:
    """``value`` is a finite real number > 0 (temperatures, Sinkhorn's epsilon)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_count(name: str, value: object, minimum: int = 1) -> None:
    """``value`` is an int >= ``minimum`` (iterations, counts)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
