"""Over-clustering (mosic.eval.overclustering): K-means of patch features matched to classes
(Hungarian at K = the number of classes, greedy many-to-one above; stubs: tests/helpers/eval.py)."""

import pytest
import torch

from helpers.eval import Blocks, ClassCode
from mosic.data.segmentation import SyntheticSegmentation
from mosic.eval.features import resolve_backbone
from mosic.eval.overclustering import evaluate_overclustering

#: tiny K-means and OpenMP on a busy machine: one thread each (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("single_threaded")


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    return resolve_backbone("vit-tiny", pretrained=False, patch_size=8, img_size=32, depth=1)


def test_overclustering_permuted_clusters_score_100():
    result = evaluate_overclustering(ClassCode(), Blocks(8), ks=(None, 6), size=None, device="cpu")
    by_k = result["miou_by_k"]
    assert by_k == {"num_classes": 100.0, "6": 100.0}
    assert [r["matching"] for r in result["results"]] == ["hungarian", "greedy"]
    assert result["results"][0]["k"] == 4 and result["mask_size"] == [100, 100]
    assert result["num_tokens"] == 8 * 16


def test_overclustering_end_to_end_synthetic_vit(tiny_vit):
    dataset = SyntheticSegmentation(num_images=16, size=32, seed=0)
    result = evaluate_overclustering(tiny_vit, dataset, ks=(None, 8), size=32, num_seeds=2)
    first, second = result["results"]
    assert (first["k"], first["matching"]) == (5, "hungarian") and (second["k"], second["matching"]) == (8, "greedy")
    for r in result["results"]:
        assert 0 <= r["miou"] <= 100 and len(r["mious"]) == 2 and len(r["iou_per_class"]) == 5
    assert result["num_tokens"] == 16 * 4 * 4 and result["pca_dim"] is None
    again = evaluate_overclustering(tiny_vit, dataset, ks=(None, 8), size=32, num_seeds=2)
    assert again["results"] == result["results"]
    pca = evaluate_overclustering(tiny_vit, dataset, ks=(8,), size=32, pca_dim=16, normalize=False)
    assert pca["pca_dim"] == 16 and 0 <= pca["results"][0]["miou"] <= 100
    with pytest.raises(ValueError, match="exceeds the 256 patch tokens"):
        evaluate_overclustering(tiny_vit, dataset, ks=(300,), size=32)
    with pytest.raises(ValueError, match="positive int or None"):
        evaluate_overclustering(tiny_vit, dataset, ks=(0,), size=32)
