"""Evaluation protocols."""

from .clustering import evaluate_video_clustering, greedy_many_to_one_miou, hungarian_miou, kmeans

__all__ = ["evaluate_video_clustering", "greedy_many_to_one_miou", "hungarian_miou", "kmeans"]
