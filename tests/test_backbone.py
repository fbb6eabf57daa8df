import pytest
import torch

import mosic
from conftest import TINY_VIT
from mosic.backbones.weights import read_state_dict


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


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "pth-wrapped"])
def test_local_weights_load_strictly(tmp_path, fmt):
    from safetensors.torch import save_file

    source = tiny()
    state = source.model.state_dict()
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pth")
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"model": state} if fmt == "pth-wrapped" else state, path)
    torch.manual_seed(123)  # a different random init, overwritten by the file
    loaded = mosic.create_backbone("vit-tiny", pretrained=str(path), **TINY_VIT)
    images = torch.randn(1, 3, 32, 32)
    assert torch.equal(loaded.eval().patch_tokens(images), source.eval().patch_tokens(images))


def test_wrong_keys_are_listed(tmp_path):
    state = tiny().model.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["norm.bias"]
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"missing keys: norm\.bias(.|\n)*unexpected keys: extra\.weight"):
        mosic.create_backbone("vit-tiny", pretrained=str(tmp_path / "w.pth"), **TINY_VIT)


def test_pickles_with_code_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"weight": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights_only"):
        read_state_dict(tmp_path / "evil.pth")


def test_offline_hub_download_says_how_to_use_a_local_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="pretrained='/path/to/weights.safetensors'"):
        mosic.create_backbone("vit-tiny", pretrained=True)
