"""AdamW and its schedule (mosic.train.optim)."""

import torch

from mosic.config import OptimConfig
from mosic.train.optim import build_optimizer


def test_adamw_is_fused_on_cuda_only():
    params = [{"params": [torch.nn.Parameter(torch.zeros(3))], "lr": 1e-3, "weight_decay": 0.0}]
    assert build_optimizer(params, OptimConfig(), torch.device("cuda")).defaults["fused"] is True
    assert build_optimizer(params, OptimConfig(), torch.device("cpu")).defaults["fused"] is False
