"""The linear probe (mosic.eval.linear_probe): a linear head on frozen patch features, trained
and scored on segmentation datasets (stubs: tests/helpers/eval.py)."""

import numpy as np
import pytest
import torch

from helpers.eval import Blocks, ClassCode
from mosic.data.segmentation import SyntheticSegmentation
from mosic.eval.features import resolve_backbone
from mosic.eval.linear_probe import evaluate_linear_probe

#: tiny K-means and OpenMP on a busy machine: one thread each (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("single_threaded")


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    return resolve_backbone("vit-tiny", pretrained=False, patch_size=8, img_size=32, depth=1)


def test_linear_probe_learns_class_coding_features():
    # 64 px images, blocks of 2x2 tokens; only pixels near block borders can be wrong (the
    # bilinear upsampling of 8x8 logits to 100x100 blends neighbouring blocks there)
    train, val = Blocks(24, seed=0, ignore_border=True, block=16), Blocks(8, seed=1, block=16)
    result = evaluate_linear_probe(ClassCode(), train, val, size=None, batch_size=8, device="cpu")
    assert result["miou"] > 95 and result["pixel_accuracy"] > 97
    assert result["mask_size"] == [100, 100] and result["token_grid"] == [8, 8] and result["input_size"] == [64, 64]
    assert len(result["train_loss"]) == 20 and result["train_loss"][-1] < 0.25 * result["train_loss"][0]
    assert result["lr"] == [0.01] * 20  # default milestone (20,) falls after the 20th epoch
    # at the token resolution the bilinear upsampling is the identity: exact
    train, val = Blocks(24, seed=0, ignore_border=True), Blocks(8, seed=1)
    exact = evaluate_linear_probe(ClassCode(), train, val, size=None, mask_size=4, batch_size=8, epochs=5)
    assert exact["miou"] == 100.0 and exact["iou_per_class"] == [100.0] * 4
    assert set(exact["timings"]) == {"features", "train", "eval", "total"}


def test_linear_probe_schedule_seed_and_errors():
    train, val = Blocks(8, seed=0), Blocks(4, seed=1)
    a = evaluate_linear_probe(ClassCode(), train, val, size=None, epochs=4, milestones=(1, 3), batch_size=4, seed=3)
    np.testing.assert_allclose(a["lr"], [0.01, 0.001, 0.001, 0.0001])
    b = evaluate_linear_probe(ClassCode(), train, val, size=None, epochs=4, milestones=(1, 3), batch_size=4, seed=3)
    assert a["train_loss"] == b["train_loss"] and a["miou"] == b["miou"]

    class Wrong(Blocks):
        num_classes = 5

    with pytest.raises(ValueError, match="must match"):
        evaluate_linear_probe(ClassCode(), train, Wrong(4), size=None, epochs=1)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        evaluate_linear_probe(ClassCode(), train, val, size=20, epochs=1)


def test_linear_probe_end_to_end_synthetic_vit(tiny_vit):
    train = SyntheticSegmentation(num_images=16, size=32, seed=0)
    val = SyntheticSegmentation(num_images=8, size=32, seed=1)
    result = evaluate_linear_probe(tiny_vit, train, val, size=32, epochs=3, batch_size=8)
    assert 0 <= result["miou"] <= 100 and 0 <= result["pixel_accuracy"] <= 100
    assert result["num_classes"] == 5 and len(result["iou_per_class"]) == 5
    assert result["num_train"] == 16 and result["num_val"] == 8
    assert all(np.isfinite(result["train_loss"]))
