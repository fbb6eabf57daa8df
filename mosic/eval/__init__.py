"""Evaluation protocols."""

from .clustering import evaluate_video_clustering, greedy_many_to_one_miou, hungarian_miou, kmeans
from .tracking import evaluate_tracker, tapvid_metrics

__all__ = [
    "evaluate_tracker",
    "evaluate_video_clustering",
    "greedy_many_to_one_miou",
    "hungarian_miou",
    "kmeans",
    "tapvid_metrics",
]
