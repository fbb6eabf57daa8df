"""The Hugging Face DINOv2 provider against the timm provider, given the same random weights.

Measured on these models (2 layers, D=96, 56 px native, weights as in tests/helpers/backbones.py):
at the native size both providers give identical patch tokens (max |diff| 0.0; asserted
with atol 1e-5). At other sizes each library interpolates the position embedding itself:
- with registers (Dinov2WithRegistersModel) transformers resamples like timm (bicubic,
  antialias=True): identical at every size tried (max |diff| 0.0);
- without registers Dinov2Model resamples with antialias=False while timm uses
  antialias=True (PyTorch's antialiased bicubic is a different kernel, also when
  upsampling): tokens differ, max |diff| 0.041 / 0.020 / 0.012 (ViT-S) and 0.041 /
  0.023 / 0.018 (ViT-g) at 28 / 84 / 56 x 112 px, for tokens of mean |value| ~0.8.
  Both are valid resamplings; the test checks shapes and finiteness there, that the
  difference stays a resampling difference (< 0.2), and that it is not zero, so that a
  change in either library is noticed.
"""

import pytest
import torch

from helpers.backbones import ARCHS, ATOL, file_in_format, hf_twin, images, randomize, save
from mosic.backbones.card import ViTSpec
from mosic.backbones.formats import load_backbone_weights
from mosic.backbones.hf_dinov2 import HFDinov2


@pytest.fixture(scope="module")
def twins():
    return {kind: hf_twin(kind) for kind in ARCHS}


def test_contract_attributes():
    spec = ViTSpec(patch_size=14, embed_dim=96, depth=2, num_heads=2, img_size=56, num_registers=4, layer_scale=True)
    hf = HFDinov2(spec)
    assert (hf.patch_size, hf.embed_dim, hf.num_prefix_tokens) == (14, 96, 5)
    assert (hf.spec, hf.weight_format, hf.weights_module()) == (spec, "hf", hf.model)
    assert type(hf.model).__name__ == "Dinov2WithRegistersModel"
    assert hf.model.config._attn_implementation == "sdpa"
    assert hf.blocks_in_order() == list(hf.model.encoder.layer) and hf.head_modules() == [hf.model.layernorm]
    assert hf.patch_tokens(torch.randn(1, 3, 42, 70)).shape == (1, 3, 5, 96)
    with pytest.raises(ValueError, match="divisible by the patch size 14"):
        hf.patch_tokens(torch.randn(1, 3, 50, 56))


@pytest.mark.parametrize("kind", list(ARCHS))
def test_same_patch_tokens_as_timm_at_the_native_size(twins, kind):
    timm_model, hf = twins[kind]
    assert type(hf.model).__name__ == ("Dinov2WithRegistersModel" if kind == "reg4" else "Dinov2Model")
    x = images()
    with torch.no_grad():
        ours, theirs = hf.patch_tokens(x), timm_model.patch_tokens(x)
    assert ours.shape == (2, 4, 4, 96)
    assert torch.allclose(ours, theirs, atol=ATOL)
    reference = hf.model(pixel_values=x).last_hidden_state[:, hf.num_prefix_tokens :].reshape(2, 4, 4, 96)
    assert torch.allclose(ours, reference, atol=1e-6)


@pytest.mark.parametrize("kind", list(ARCHS))
def test_off_native_sizes_each_provider_interpolates_its_own_way(twins, kind):
    timm_model, hf = twins[kind]
    for height, width in ((28, 28), (84, 84), (56, 112)):
        x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(height + width))
        with torch.no_grad():
            ours, theirs = hf.patch_tokens(x), timm_model.patch_tokens(x)
        assert ours.shape == theirs.shape == (1, height // 14, width // 14, 96)
        assert torch.isfinite(ours).all()
        difference = (ours - theirs).abs().max().item()
        if kind == "reg4":  # both bicubic with antialias: the same resampling
            assert difference < ATOL
        else:  # Dinov2Model: antialias=False vs timm's antialias=True
            assert 0 < difference < 0.2


def test_token_mask_drops_tokens(twins):
    timm_model, hf = twins["reg4"]
    x = images()
    none = torch.zeros(2, 4, 4, dtype=torch.bool)
    with torch.no_grad():
        assert torch.allclose(hf.patch_tokens(x, none), hf.patch_tokens(x), atol=1e-6)
        mask = torch.zeros(2, 4, 4, dtype=torch.bool)
        mask[0, 0, :2] = True
        mask[1, 3, 2:] = True
        out = hf.patch_tokens(x, mask)
        assert torch.equal(out[mask], torch.zeros_like(out[mask]))
        assert (out[~mask].abs().sum(-1) > 0).all()
        assert torch.allclose(out, timm_model.patch_tokens(x, mask), atol=ATOL)
        changed = x.clone()
        changed[0, :, :14, :14] += 5.0  # the pixels of token (0, 0), which is dropped
        assert torch.allclose(hf.patch_tokens(changed, mask)[0], out[0], atol=1e-5)
    uneven = torch.zeros(2, 4, 4, dtype=torch.bool)
    uneven[0, 0, 0] = True
    with pytest.raises(ValueError, match="same number"):
        hf.patch_tokens(x, uneven)


@pytest.mark.parametrize("fmt", ["timm", "torchhub", "hf-legacy", "prefixed"])
def test_files_of_every_dinov2_format_load_into_the_hf_provider(tmp_path, twins, fmt):
    timm_model, _ = twins["giant"]
    state, _ = file_in_format(fmt, "giant", timm_model.model.state_dict())
    path = save(state, tmp_path / "w.safetensors")
    hf = HFDinov2(timm_model.spec, pretrained=path).eval()
    x = images()
    with torch.no_grad():
        assert torch.allclose(hf.patch_tokens(x), timm_model.patch_tokens(x), atol=ATOL)
    report = load_backbone_weights(hf, path)
    assert report.num_loaded == len(hf.model.state_dict())  # the mask token is written as zeros


def test_mask_token_stays_frozen():
    spec = ViTSpec(patch_size=14, embed_dim=96, depth=2, num_heads=2, img_size=56, layer_scale=True)
    hf = HFDinov2(spec)
    for blocks in ("all", 1):
        hf.set_trainable(blocks)
        assert not hf.model.embeddings.mask_token.requires_grad  # unused: DDP needs it frozen
    trainable = {n for n, _ in hf.trainable_parameters()}
    assert any(n.startswith("model.encoder.layer.1.") for n in trainable) and "model.layernorm.weight" in trainable
    assert not any(n.startswith(("model.encoder.layer.0.", "model.embeddings.")) for n in trainable)
    randomize(hf.model)
    hf.patch_tokens(images()).sum().backward()
    assert hf.model.layernorm.weight.grad is not None


def test_offline_download_says_how_to_use_a_local_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = ViTSpec(patch_size=14, embed_dim=384, depth=12, num_heads=6, img_size=518, layer_scale=True)
    with pytest.raises(RuntimeError, match="pretrained='/path/to/weights.safetensors'"):
        HFDinov2(spec, repo="facebook/dinov2-small", pretrained=True)


def test_architectures_transformers_cannot_build_are_refused():
    with pytest.raises(ValueError, match="layer scale"):
        HFDinov2(ViTSpec(kind="eva", patch_size=16, embed_dim=64, depth=1, num_heads=2, img_size=64, mlp="swiglu"))
    with pytest.raises(ValueError, match="SwiGLU width"):
        HFDinov2(ViTSpec(patch_size=14, embed_dim=100, depth=1, num_heads=2, img_size=56, mlp="swiglu", layer_scale=True))
