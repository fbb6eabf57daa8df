"""Evaluation reports (JSON, markdown, comparison), figures, dense features and backbone resolution."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mosic.data.segmentation import (
    IGNORE_INDEX,
    SegmentationDataset,
    SyntheticSegmentation,
    SyntheticVideoSegmentation,
    VideoSegmentationDataset,
)
from mosic.eval.features import dense_features, resolve_backbone
from mosic.eval.figures import overlay, palette, save_segmentation_figure, save_video_clusters_figure
from mosic.eval.report import compare_reports, make_report, read_report, write_report
from mosic.export import export_backbone

TINY = {"pretrained": False, "patch_size": 8, "img_size": 32, "depth": 1}


def test_report_round_trip_markdown_and_comparison(tmp_path):
    a = make_report("overclustering", "vit-tiny", "synthetic", {"miou": 40.0, "k100/miou": 50.5}, {"seed": 0},
                    {"iou_per_class": np.array([1.0, 2.0])}, seconds=1.5)
    b = make_report("overclustering", "runs/x (teacher)", "synthetic", {"miou": 43.25, "k100/miou": 49.5})
    path = write_report(a, tmp_path / "a")
    assert json.loads(path.read_text())["details"]["iou_per_class"] == [1.0, 2.0]
    assert "| miou | 40.00 |" in (tmp_path / "a" / "results.md").read_text()
    assert read_report(tmp_path / "a")["metrics"] == a["metrics"]
    table = compare_reports(read_report(tmp_path / "a"), b)
    assert "| miou | 40.00 | 43.25 | +3.25 |" in table
    assert "| k100/miou | 50.50 | 49.50 | -1.00 |" in table
    with pytest.raises(TypeError, match="scalars"):
        make_report("p", "b", "d", {"per_class": [1, 2]})
    with pytest.raises(FileNotFoundError, match="results.json"):
        read_report(tmp_path / "missing")


def test_figures_have_the_expected_size_and_show_the_labels(tmp_path):
    data = SyntheticSegmentation(num_images=2, size=32)
    images = [data[i].image for i in range(2)]
    masks = [data[i].mask for i in range(2)]
    path = save_segmentation_figure(images, masks, masks, tmp_path / "pred.png", scale=2)
    figure = np.asarray(Image.open(path))
    pad, caption = 4, 14
    assert figure.shape == (pad + 2 * (64 + caption + pad), pad + 3 * (64 + pad), 3)
    assert figure.std() > 10  # not blank
    blended = overlay(images[0], masks[0])
    labelled = masks[0] != 0
    assert not np.array_equal(blended[labelled], images[0][labelled])  # objects are tinted
    ignored = masks[0].copy()
    ignored[:8] = IGNORE_INDEX
    assert np.array_equal(overlay(images[0], ignored)[:8], images[0][:8])  # ignore stays untinted
    assert len({tuple(c) for c in palette(16)}) == 16

    videos = SyntheticVideoSegmentation(num_videos=1, num_frames=4, size=32)
    frames = videos.read_frames(0, range(4))
    clusters = np.random.default_rng(0).integers(0, 5, (4, 4, 4))
    path = save_video_clusters_figure(frames, clusters, tmp_path / "video.png", masks=videos.read_masks(0, range(4)))
    assert np.asarray(Image.open(path)).shape[1] == pad + 4 * (64 + pad)


def test_synthetic_datasets_follow_the_protocols():
    images = SyntheticSegmentation(num_images=5, size=32, frames_per_video=2)
    assert isinstance(images, SegmentationDataset) and len(images) == 5 and images.num_classes == 5
    sample = images[4]
    assert sample.image.shape == (32, 32, 3) and sample.image.dtype == np.uint8
    assert sample.mask.dtype == np.int64 and sample.mask.max() < images.num_classes
    videos = SyntheticVideoSegmentation(num_videos=2, num_frames=6, size=32)
    assert isinstance(videos, VideoSegmentationDataset)
    assert videos.read_masks(1, [0, 5]).shape == (2, 32, 32) and videos.annotated_frames(1) == list(range(6))
    with pytest.raises(IndexError):
        images[5]


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
