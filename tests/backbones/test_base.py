"""The Backbone interface (mosic.backbones.base) on a tiny ViT: patch tokens, token masks, preprocessing."""

import pytest
import torch
import torch.nn.functional as F

import mosic
from conftest import TINY_VIT
from helpers.backbones import eva_backbone, hf_twin, timm_backbone


def tiny(**kwargs):
    torch.manual_seed(0)
    return mosic.create_backbone("vit-tiny", pretrained=False, **{**TINY_VIT, **kwargs})


def test_patch_tokens_shape_and_any_size_divisible_by_the_patch():
    backbone = tiny()
    assert (backbone.patch_size, backbone.embed_dim, backbone.num_prefix_tokens) == (8, 48, 1)
    assert backbone.patch_tokens(torch.randn(2, 3, 32, 32)).shape == (2, 4, 4, 48)
    assert backbone.patch_tokens(torch.randn(1, 3, 48, 24)).shape == (1, 6, 3, 48)  # interpolated pos-embed
    with pytest.raises(ValueError, match="divisible by the patch size 8"):
        backbone.patch_tokens(torch.randn(1, 3, 30, 32))


def test_patch_tokens_equal_timm_forward_features():
    backbone = tiny().eval()
    images = torch.randn(2, 3, 32, 32)
    reference = backbone.model.forward_features(images)[:, 1:].reshape(2, 4, 4, -1)
    assert torch.allclose(backbone.patch_tokens(images), reference, atol=1e-5)


def test_token_mask_drops_tokens():
    backbone = tiny().eval()
    images = torch.randn(2, 3, 32, 32)
    none = torch.zeros(2, 4, 4, dtype=torch.bool)
    assert torch.allclose(backbone.patch_tokens(images, none), backbone.patch_tokens(images), atol=1e-6)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 0, :2] = True
    mask[1, 3, 2:] = True
    out = backbone.patch_tokens(images, mask)
    assert torch.equal(out[mask], torch.zeros_like(out[mask]))
    assert (out[~mask].abs().sum(-1) > 0).all()
    # a dropped token no longer influences the others
    changed = images.clone()
    changed[0, :, :8, :8] += 5.0  # the pixels of token (0, 0), which is dropped
    assert torch.allclose(backbone.patch_tokens(changed, mask)[0], out[0], atol=1e-5)
    uneven = torch.zeros(2, 4, 4, dtype=torch.bool)
    uneven[0, 0, 0] = True
    with pytest.raises(ValueError, match="same number"):
        backbone.patch_tokens(images, uneven)


def test_preprocess_normalises_uint8():
    backbone = tiny()
    frames = torch.full((1, 3, 8, 8), 255, dtype=torch.uint8)
    expected = (1 - torch.tensor(backbone.mean)) / torch.tensor(backbone.std)
    assert torch.allclose(backbone.preprocess(frames)[0, :, 0, 0], expected)
    with pytest.raises(ValueError, match="uint8"):
        backbone.preprocess(frames.float())


# ---- malformed images fail fast, with a message naming the expected form


@pytest.fixture(scope="module")
def tiny_backbone():
    return mosic.create_backbone("vit-tiny", pretrained=False, **{**TINY_VIT, "depth": 1})


def test_backbone_images_are_checked(tiny_backbone):
    with pytest.raises(ValueError, match=r"images must be \(B, 3, H, W\) float.*got torch.float32 \(3, 32, 32\)"):
        tiny_backbone.patch_tokens(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match=r"images must be \(B, 3, H, W\) float.*got torch.float32 \(1, 4, 32, 32\)"):
        tiny_backbone.patch_tokens(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match="not divisible by the patch size 8"):
        tiny_backbone.patch_tokens(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"token_mask must be a bool tensor of shape \(B, h, w\) = \(2, 4, 4\)"):
        tiny_backbone.patch_tokens(torch.zeros(2, 3, 32, 32), token_mask=torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="preprocess expects uint8 frames"):
        tiny_backbone.preprocess(torch.zeros(1, 3, 32, 32))


def test_backbone_rejects_uint8_images_readably(tiny_backbone):
    with pytest.raises(ValueError, match=r"images must be .*float.*preprocess"):
        tiny_backbone.patch_tokens(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


# ---- the GPU path: flash (scaled-dot-product) attention in every backbone provider


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


# ---- which parameters train (docs/differences.md, "trainable parameters")


@pytest.mark.parametrize("depth", [12, 24])
def test_train_blocks_2_trains_the_last_two_blocks_and_the_final_norm(depth):
    """mosic: the last two blocks and the final norm. The authors' rule (names containing
    "blocks.10" or "blocks.11") freezes the final norm, and on a 24-block ViT-L picks two
    middle blocks; mosic does not copy that."""
    backbone = mosic.create_backbone("vit-tiny", pretrained=False, **{**TINY_VIT, "depth": depth, "embed_dim": 16})
    backbone.set_trainable(2)
    trainable = {n for n, _ in backbone.trainable_parameters()}
    blocks = {n.split(".")[2] for n in trainable if n.startswith("model.blocks.")}
    assert blocks == {str(depth - 2), str(depth - 1)}
    assert {n for n in trainable if not n.startswith("model.blocks.")} == {"model.norm.weight", "model.norm.bias"}
    authors = {n for n, _ in backbone.named_parameters() if any(k in n for k in ("blocks.10", "blocks.11"))}
    if depth == 12:  # the same blocks; the final norm trains only in mosic
        assert authors < trainable and trainable - authors == {"model.norm.weight", "model.norm.bias"}
    else:  # their rule: blocks 10 and 11 of 24
        assert authors and not trainable & authors
