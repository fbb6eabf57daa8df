"""The GPU path's parts: flash (scaled-dot-product) attention in every backbone provider,
fused AdamW on CUDA, fp32 Sinkhorn and loss inside bf16 autocast, and (on a CUDA
machine) a training step that never waits for the GPU."""

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from mosic import PostPretrainer
from mosic.config import OptimConfig
from mosic.data.clips import ClipDataset, collate_clips
from mosic.data.synthetic import SyntheticVideos
from mosic.optim import build_optimizer
from test_backbone_hf import hf_twin
from test_weight_formats import eva_backbone, timm_backbone


@pytest.fixture
def sdpa_calls(monkeypatch):
    calls = []
    original = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    return calls


@pytest.mark.parametrize("provider", ["timm-dinov2", "timm-eva", "hf-dinov2"])
def test_every_attention_layer_uses_scaled_dot_product_attention(provider, sdpa_calls):
    if provider == "timm-dinov2":
        backbone = timm_backbone("small")
    elif provider == "timm-eva":
        backbone = eva_backbone()
    else:
        backbone = hf_twin("small")[1]
    size = backbone.patch_size * 4
    with torch.no_grad():
        backbone(torch.randn(2, 3, size, size))
    depth = len(backbone.blocks_in_order())
    assert len(sdpa_calls) == depth, f"{provider}: {len(sdpa_calls)} SDPA calls for {depth} blocks"


def test_adamw_is_fused_on_cuda_only():
    params = [{"params": [torch.nn.Parameter(torch.zeros(3))], "lr": 1e-3, "weight_decay": 0.0}]
    assert build_optimizer(params, OptimConfig(), torch.device("cuda")).defaults["fused"] is True
    assert build_optimizer(params, OptimConfig(), torch.device("cpu")).defaults["fused"] is False


def batch(n=4):
    ds = ClipDataset(SyntheticVideos(num_videos=8, num_frames=12, size=32, seed=0), 4, 2, 32)
    return collate_clips([ds[(0, i)] for i in range(n)])


def test_bf16_step_keeps_sinkhorn_and_loss_in_fp32(monkeypatch):
    import mosic.objectives.mosic as objective_module

    seen = {}
    original = objective_module.sinkhorn

    def recording(scores, *args, **kwargs):
        out = original(scores, *args, **kwargs)
        seen["scores"], seen["plan"] = scores.dtype, out.dtype
        return out

    monkeypatch.setattr(objective_module, "sinkhorn", recording)
    trainer = PostPretrainer(config=tiny_config(**{"train.precision": "bf16"}))
    trainer._prepare_optimizer(4)
    linear_dtypes = set()
    for module in trainer.learner.backbone.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda m, i, o: linear_dtypes.add(o.dtype))
    metrics = trainer.train_step(batch())
    assert linear_dtypes == {torch.bfloat16}  # the backbone's matmuls did run in bf16 ...
    assert seen == {"scores": torch.bfloat16, "plan": torch.float32}  # ... Sinkhorn did not
    assert metrics["loss"].dtype == torch.float32 and torch.isfinite(metrics["loss"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_step_never_synchronises_with_the_host():
    trainer = PostPretrainer(config=tiny_config(**{"train.device": "cuda"}))
    trainer._prepare_optimizer(4)
    data = batch()
    data["frames"] = data["frames"].pin_memory()
    trainer.train_step(data)  # warm-up: lazy CUDA initialisation may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        metrics = trainer.train_step(data)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(metrics["loss"]).item()


def test_resolve_device_picks_this_process_gpu_under_torchrun(monkeypatch):
    from mosic.device import resolve_device

    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("cuda") == torch.device("cuda", 3)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # an explicit index is kept
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.delenv("LOCAL_RANK")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
