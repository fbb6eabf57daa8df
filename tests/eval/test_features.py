"""Dense features (mosic.eval.features): resolving a backbone and reading its patch features."""

import numpy as np
import pytest
import torch

import mosic
from conftest import TINY_VIT
from mosic.eval.features import dense_features, resolve_backbone
from mosic.export import export_backbone


@pytest.fixture(scope="module")
def tiny_backbone():
    return mosic.create_backbone("vit-tiny", pretrained=False, **{**TINY_VIT, "depth": 1})


def test_weights_and_features_arguments(tiny_backbone):
    from mosic.backbones.formats import load_backbone_weights
    from mosic.eval.features import dense_features, resolve_backbone

    with pytest.raises(ValueError, match=r"a state dict must map str names to tensors; not so for \['a'\]"):
        load_backbone_weights(tiny_backbone, {"a": 1.0})
    with pytest.raises(TypeError, match="prefix must be None or a str"):
        load_backbone_weights(tiny_backbone, {}, prefix=3)
    images = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="dense_features: batch_size must be an int >= 1, got 0"):
        dense_features(tiny_backbone, images, batch_size=0)
    with pytest.raises(ValueError, match=r"dense_features: size must be None, an int or \(H, W\) ints, got 'big'"):
        dense_features(tiny_backbone, images, size="big")
    with pytest.raises(ValueError, match=r"dense_features: images must be \(N, H, W, 3\) uint8 RGB, got \(2, 32, 32\)"):
        dense_features(tiny_backbone, images[..., 0])
    with pytest.raises(TypeError, match="dense_features: backbone must be a mosic Backbone"):
        dense_features("vit-tiny", images)
    with pytest.raises(TypeError, match="resolve_backbone: spec must be a Backbone"):
        resolve_backbone(3.5)
    assert dense_features(tiny_backbone, images, size=(np.int64(16), 32)).shape == (2, 2, 4, 48)


TINY = {"pretrained": False, "patch_size": 8, "img_size": 32, "depth": 1}


def test_dense_features_shapes_and_size_checks():
    backbone = resolve_backbone("vit-tiny", **TINY)
    x = np.random.default_rng(0).integers(0, 255, (3, 40, 40, 3), dtype=np.uint8)
    assert dense_features(backbone, x).shape == (3, 5, 5, 192)  # 40 px -> 5 x 5 patches of 8
    assert dense_features(backbone, x, size=32, batch_size=2).shape == (3, 4, 4, 192)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        dense_features(backbone, x, size=30)
    with pytest.raises(ValueError, match="uint8"):
        dense_features(backbone, x.astype(np.float32))


def test_resolve_backbone_from_a_name_an_export_and_a_run(tmp_path, synthetic):
    import mosic
    from conftest import tiny_config

    backbone = resolve_backbone("dino-s16", pretrained=False, depth=1, embed_dim=48, num_heads=2)
    x = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    reference = dense_features(backbone, x)
    for fmt in ("timm", "torchhub"):
        export_backbone(backbone, tmp_path / fmt, format=fmt)
        assert torch.allclose(dense_features(resolve_backbone(tmp_path / fmt), x), reference, atol=1e-5)
    trainer = mosic.PostPretrainer(config=tiny_config(**{"train.max_steps": 1, "train.out_dir": str(tmp_path / "run")}))
    trainer.fit(synthetic)
    from_run = resolve_backbone(tmp_path / "run")
    for p, q in zip(from_run.parameters(), trainer.teacher.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="registered backbone name"):
        resolve_backbone("not-a-backbone")
