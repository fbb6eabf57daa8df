"""ProjectionHead initialisation: mosic's trunc_normal(0.02), or nn.Linear's default (the authors')."""

import pytest
import torch
from torch import nn

from mosic.objectives.head import ProjectionHead


def test_pytorch_init_leaves_nn_linear_default_init():
    """The authors' head is a plain nn.Sequential of nn.Linear layers, never re-initialised:
    with the same seed, init="pytorch" draws exactly those weights."""
    torch.manual_seed(3)
    head = ProjectionHead(12, (24, 16), 8, init="pytorch")
    torch.manual_seed(3)
    plain = [nn.Linear(12, 24), nn.Linear(24, 16), nn.Linear(16, 8)]
    linears = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert len(linears) == 3 and [type(m) for m in head.mlp] == [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]
    for ours, theirs in zip(linears, plain):
        assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)


def test_trunc_normal_init_is_the_default():
    torch.manual_seed(3)
    head = ProjectionHead(384, (256,), 128)
    assert head.init == "trunc_normal"
    for m in head.mlp:
        if isinstance(m, nn.Linear):
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
            assert abs(m.weight.std().item() - 0.02) < 0.002  # nn.Linear's default would be 1/sqrt(3 fan_in): 0.029, 0.036


def test_unknown_init_is_rejected():
    with pytest.raises(ValueError, match=r"init \(head_init\) must be 'trunc_normal' or 'pytorch', got 'zeros'"):
        ProjectionHead(4, (), 4, init="zeros")
