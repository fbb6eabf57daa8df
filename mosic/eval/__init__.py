"""Evaluation protocols: the paper's dense protocols, label propagation and tracking metrics.

``mosic eval PROTOCOL`` runs them by name (:mod:`mosic.eval.protocols`); each is also a
function: :func:`evaluate_in_context` (Hummingbird), :func:`evaluate_linear_probe`,
:func:`evaluate_overclustering`, :func:`evaluate_video_clustering`,
:func:`evaluate_label_propagation`. Their scores (confusion matrix, IoU, Hungarian and
greedy cluster-to-class matching, mIoU) come from :mod:`mosic.eval.metrics`.
"""

from .clustering import evaluate_video_clustering, kmeans
from .davis_metrics import davis_scores, f_boundary, jaccard
from .features import dense_features, resolve_backbone
from .hummingbird import evaluate_in_context, evaluate_in_context_fractions
from .knn import NearestNeighbors
from .label_propagation import evaluate_label_propagation, propagate_labels
from .linear_probe import evaluate_linear_probe
from .metrics import (
    confusion_matrix,
    greedy_many_to_one_miou,
    greedy_matching,
    hungarian_matching,
    hungarian_miou,
    iou_matrix,
    miou_from_confusion,
    pixel_accuracy,
)
from .overclustering import evaluate_overclustering
from .protocols import PROTOCOLS, run_protocol
from .report import compare_reports, read_report, write_report
from .track_consistency import track_consistency
from .tracking import evaluate_tracker, tapvid_metrics

__all__ = [
    "PROTOCOLS",
    "NearestNeighbors",
    "compare_reports",
    "confusion_matrix",
    "davis_scores",
    "dense_features",
    "evaluate_in_context",
    "evaluate_in_context_fractions",
    "evaluate_label_propagation",
    "evaluate_linear_probe",
    "evaluate_overclustering",
    "evaluate_tracker",
    "evaluate_video_clustering",
    "f_boundary",
    "greedy_many_to_one_miou",
    "greedy_matching",
    "hungarian_matching",
    "hungarian_miou",
    "iou_matrix",
    "jaccard",
    "kmeans",
    "miou_from_confusion",
    "pixel_accuracy",
    "propagate_labels",
    "read_report",
    "resolve_backbone",
    "run_protocol",
    "tapvid_metrics",
    "track_consistency",
    "write_report",
]
