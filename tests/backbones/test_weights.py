"""Reading weight files (mosic.backbones.weights): safetensors or torch.load(weights_only=True), never
arbitrary pickle; the error names the file and says how to convert it."""

import pickle

import pytest
import torch
from safetensors.torch import save_file

import mosic
from conftest import TINY_VIT
from helpers.untrusted import REFUSED, evil_file
from mosic.backbones.weights import UnsafeWeightsError, read_state_dict


def test_the_payload_works_when_unpickled(tmp_path):
    """The test is meaningful: plain pickle.load of the file does create the marker."""
    marker = tmp_path / "PWNED"
    path = evil_file(tmp_path / "evil.bin", marker, kind="pickle")
    with open(path, "rb") as f:
        pickle.load(f)
    assert marker.exists()


@pytest.mark.parametrize("name,kind", [("w.pth", "torch"), ("w.pt", "torch"), ("pytorch_model.bin", "pickle"), ("w.ckpt", "torch")])
def test_read_state_dict_refuses_code_and_explains(tmp_path, marker, name, kind):
    path = evil_file(tmp_path / name, marker, kind)
    with pytest.raises(UnsafeWeightsError, match=REFUSED) as info:
        read_state_dict(path)
    message = str(info.value)
    assert str(path) in message  # names the file
    assert "weights_only=True" in message and "never" in message
    assert "the Python object posix.system" in message  # says what the file asked for
    assert "add_safe_globals" not in message and "weights_only` set to `False`" not in message  # no unsafe advice


def test_backbone_entry_points_refuse_code(tmp_path, marker):
    path = evil_file(tmp_path / "backbone.pth", marker)
    with pytest.raises(ValueError, match=REFUSED):
        mosic.create_backbone("vit-tiny", pretrained=str(path), **TINY_VIT)
    with pytest.raises(ValueError, match=REFUSED):
        mosic.BACKBONES.create("vit-tiny", weights=path, **TINY_VIT)
    backbone = mosic.create_backbone("vit-tiny", pretrained=False, **TINY_VIT)
    with pytest.raises(ValueError, match=REFUSED):
        backbone.load_weights(path)
    from mosic.backbones.formats import load_backbone_weights

    with pytest.raises(ValueError, match=REFUSED):
        load_backbone_weights(backbone, path, strict=False)


def test_a_pickle_named_safetensors_is_refused(tmp_path, marker):
    path = evil_file(tmp_path / "model.safetensors", marker)
    with pytest.raises(UnsafeWeightsError, match=r"cannot read the safetensors file .*model\.safetensors"):
        read_state_dict(path)


def test_safetensors_content_is_read_whatever_the_suffix(tmp_path):
    tensors = {"a": torch.arange(3.0)}
    save_file(tensors, str(tmp_path / "weights.bin"))
    assert torch.equal(read_state_dict(tmp_path / "weights.bin")["a"], tensors["a"])


def test_corrupt_and_non_state_dict_files_are_reported(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"\x00not a checkpoint at all")
    with pytest.raises(UnsafeWeightsError, match=r"cannot read .*junk\.pth.*corrupt, truncated or not a weights file"):
        read_state_dict(tmp_path / "junk.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"list\.pth does not contain a state dict \(name -> tensor\), got a list"):
        read_state_dict(tmp_path / "list.pth")
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        read_state_dict(123)


# ---- a backbone's local and hub weights


def tiny(**kwargs):
    torch.manual_seed(0)
    return mosic.create_backbone("vit-tiny", pretrained=False, **{**TINY_VIT, **kwargs})


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
