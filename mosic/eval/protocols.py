"""The evaluation protocols by name: what ``mosic eval PROTOCOL`` runs.

Each protocol takes a backbone (a built one, a registered name, a run folder or an
export folder; see :func:`~mosic.eval.features.resolve_backbone`) and datasets given as
specs (:func:`~mosic.data.segmentation.open_segmentation_dataset`; synthetic by
default, so every protocol runs offline), and returns a report
(:mod:`mosic.eval.report`) with scalar ``metrics`` and larger ``details``.

| protocol | data | paper |
|---|---|---|
| ``in-context`` | train + val images | Hummingbird, Table 1 (fractions x seeds) |
| ``linear`` | train + val images | linear segmentation probe, Table 4 |
| ``overclustering`` | val images | K-means, K = #classes (Hungarian) and 100/300/500 (greedy), Table 3 |
| ``video-clustering`` | videos | unsupervised video segmentation F / C / D, Table 2 |
| ``label-propagation`` | videos | DAVIS-17 semi-supervised J&F |
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backbones.base import Backbone
from ..checks import is_real
from ..data.segmentation import open_segmentation_dataset
from .features import dense_features, resize_images, resolve_backbone
from .report import make_report, write_report

#: protocol -> (kind of data, needs a training split, default data spec)
PROTOCOLS: dict[str, tuple[str, bool, str]] = {
    "in-context": ("image", True, "synthetic"),
    "linear": ("image", True, "synthetic"),
    "overclustering": ("image", False, "synthetic"),
    "video-clustering": ("video", False, "synthetic-video"),
    "label-propagation": ("video", False, "synthetic-video"),
}


def run_protocol(
    protocol: str,
    backbone: Backbone | str | Path,
    *,
    data: str | None = None,
    train_data: str | None = None,
    model: str = "teacher",
    out: str | Path | None = None,
    figures: int = 0,
    backbone_kwargs: dict[str, Any] | None = None,
    label: str | None = None,
    device: str | None = None,
    **options: Any,
) -> dict:
    """Run one protocol and return its report (also written to ``out`` when given).

    Args:
        data: the evaluation dataset spec (default: synthetic data of the right kind).
        train_data: the training split for ``in-context`` and ``linear`` (default: the
            same dataset's training split, e.g. VOC trainaug for ``voc:ROOT``).
        figures: write that many qualitative examples as PNG into ``out``.
        label: how the report names the backbone (default: the spec, or the class name).
        device: move the backbone there before evaluating (default: where it was built).
        options: protocol arguments (``size``, ``fractions``, ``seeds``, ``ks``, ``epochs``, ...).
    """
    if protocol not in PROTOCOLS:
        import difflib

        close = difflib.get_close_matches(protocol, list(PROTOCOLS), n=2)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(f"unknown protocol {protocol!r}; {hint}protocols: {', '.join(PROTOCOLS)}")
    kind, needs_train, default_data = PROTOCOLS[protocol]
    spec = data or default_data
    if label is None:
        label = str(backbone) if not isinstance(backbone, Backbone) else type(backbone).__name__
        if isinstance(backbone, (str, Path)) and Path(backbone).is_dir():
            label = f"{backbone} ({model})"
    val = open_segmentation_dataset(spec, "val")  # data errors first: they cost nothing
    train = open_segmentation_dataset(train_data or spec, "train") if needs_train else None
    _check_kind(protocol, kind, val)
    backbone = resolve_backbone(backbone, model=model, **(backbone_kwargs or {}))
    if device is not None:
        import torch

        backbone = backbone.to(torch.device(device))
    if spec.startswith("synthetic") and kind == "image":
        options.setdefault("size", None)  # the small synthetic images at their own size, not the paper's 448
    start = time.perf_counter()
    run_options = {**options, "return_predictions": figures} if protocol == "linear" and figures else options
    metrics, details = _RUNNERS[protocol](backbone, val, train, run_options)
    seconds = time.perf_counter() - start
    predictions = details.pop("predictions", None)
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}
    dataset = spec if train is None else f"train {train_data or spec} / val {spec}"
    report = make_report(protocol, label, dataset, metrics, settings, details, seconds)
    if out is not None:
        write_report(report, out)
        if figures:
            qualitative_figures(protocol, backbone, val, Path(out), figures, predictions)
    return report


def _check_kind(protocol: str, kind: str, dataset: Any) -> None:
    is_video = hasattr(dataset, "read_masks")
    if (kind == "video") != is_video:
        want = "videos with masks (davis:, ytvos:, synthetic-video)" if kind == "video" else "images (voc:, ade20k:, coco-things:, synthetic)"
        raise ValueError(f"the {protocol} protocol needs {want}, got {dataset!r}")


# ---- the runners: (backbone, val, train, options) -> (metrics, details) ----------------------


def _in_context(backbone, val, train, options):
    from .hummingbird import evaluate_in_context_fractions

    result = evaluate_in_context_fractions(backbone, train, val, **options)
    metrics = {}
    for entry in result["fractions"]:
        metrics[f"miou@{entry['label']}"] = entry["miou_mean"]
        metrics[f"miou_std@{entry['label']}"] = entry["miou_std"]
    details = {"fractions": [{k: v for k, v in e.items() if k != "runs"} for e in result["fractions"]]}
    return metrics, details


def _linear(backbone, val, train, options):
    from .linear_probe import evaluate_linear_probe

    result = evaluate_linear_probe(backbone, train, val, **options)
    metrics = {"miou": result["miou"], "pixel_accuracy": result["pixel_accuracy"]}
    return metrics, {k: v for k, v in result.items() if k not in metrics}


def _overclustering(backbone, val, train, options):
    from .overclustering import evaluate_overclustering

    result = evaluate_overclustering(backbone, val, **options)
    metrics = {}
    for entry in result["results"]:
        name = "K=classes" if entry["requested"] is None else f"K={entry['k']}"
        metrics[f"miou@{name}"] = entry["miou"]
    return metrics, result


def _video_clustering(backbone, val, train, options):
    from .clustering import evaluate_video_clustering

    if "modes" not in options:  # every setting the data supports: D needs class masks
        has_classes = hasattr(val, "read_class_masks") or getattr(val, "ground_truth", lambda i: None)(0) is not None
        options = {**options, "modes": ("dataset", "clip", "frame") if has_classes else ("clip", "frame")}
    result = evaluate_video_clustering(backbone, val, **options)
    metrics = {key: value for key, value in _scalars(result).items() if "miou" in key}
    return metrics, result


def _label_propagation(backbone, val, train, options):
    from .label_propagation import evaluate_label_propagation

    result = evaluate_label_propagation(backbone, val, **options)
    headline = ("jf_mean", "j_mean", "j_recall", "j_decay", "f_mean", "f_recall", "f_decay", "fps")
    metrics = {key: float(result[key]) for key in headline if key in result}
    return metrics, result


_RUNNERS: dict[str, Callable] = {
    "in-context": _in_context,
    "linear": _linear,
    "overclustering": _overclustering,
    "video-clustering": _video_clustering,
    "label-propagation": _label_propagation,
}


def _scalars(result: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested result dict, keys joined with '/' (lists skipped)."""
    out: dict[str, float] = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_scalars(value, name + "/"))
        elif is_real(value):
            out[name] = float(value)
    return out


# ---- qualitative figures ---------------------------------------------------------------------


def qualitative_figures(
    protocol: str, backbone: Backbone, dataset: Any, out: Path, count: int, predictions: list | None = None
) -> list[Path]:
    """PNG examples next to the report, each with the ground truth: the linear probe's
    predictions (``predictions``), K-means cluster maps over images (the other image
    protocols), over the frames of a clip (video-clustering), or the propagated masks
    (label-propagation)."""
    from .clustering import segment_features
    from .figures import save_segmentation_figure, save_video_clusters_figure

    paths = []
    if PROTOCOLS[protocol][0] == "image":
        samples = [dataset[i] for i in range(min(count, len(dataset)))]
        images = _same_size([s.image for s in samples])  # panels of one size; label maps are resized by overlay
        masks = [s.mask for s in samples]
        if predictions is not None:
            maps, name, title = predictions[: len(samples)], "predictions.png", protocol
        else:
            k = getattr(dataset, "num_classes", 8)
            maps, name, title = list(segment_features(dense_features(backbone, images), k)), "clusters.png", f"K-means, K={k}"
        paths.append(save_segmentation_figure(list(images), maps, masks, out / name, title=title))
        return paths
    for v in range(min(count, len(dataset))):
        frames_index = dataset.annotated_frames(v)[:8]
        frames = dataset.read_frames(v, frames_index)
        masks = dataset.read_masks(v, frames_index)
        if protocol == "label-propagation":
            from .label_propagation import propagate_labels

            pred = propagate_labels(backbone, frames, masks[0])
            title = "propagated"
        else:
            pred = segment_features(dense_features(backbone, frames), max(2, len(np.unique(masks[masks != 255]))))
            title = "K-means per clip"
        paths.append(save_video_clusters_figure(frames, pred, out / f"video_{v}.png", masks=masks, title=title))
    return paths


def _same_size(images: Sequence[np.ndarray]) -> np.ndarray:
    """(N, H, W, 3) uint8: every image resized (bilinear) to the first one's size."""
    size = images[0].shape[:2]
    resized = [
        im if im.shape[:2] == size else resize_images(torch.from_numpy(im).permute(2, 0, 1)[None], size)[0].permute(1, 2, 0).numpy()
        for im in images
    ]
    return np.stack(resized)
