"""Objectives: student/teacher patch tokens + tracks -> loss and metrics."""

from . import mosic  # noqa: F401  (registers the built-in objectives)
from .base import OBJECTIVES, Objective, ObjectiveInputs, ObjectiveOutput, register_objective
from .head import ProjectionHead, Prototypes
from .mosic import MoSiCObjective

__all__ = [
    "OBJECTIVES",
    "MoSiCObjective",
    "Objective",
    "ObjectiveInputs",
    "ObjectiveOutput",
    "ProjectionHead",
    "Prototypes",
    "register_objective",
]
