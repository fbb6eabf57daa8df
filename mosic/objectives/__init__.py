"""Objectives: student/teacher patch tokens + tracks -> loss and metrics."""

from . import mosic  # noqa: F401  (registers the built-in objectives)
from . import spacetime_kmeans  # noqa: F401
from . import correspondence  # noqa: F401
from .base import OBJECTIVES, Objective, ObjectiveInputs, ObjectiveOutput, register_objective
from .card import ObjectiveCard
from .correspondence import CorrespondenceObjective
from .composite import CompositeObjective, build_objective, parse_objective_expression
from .head import ProjectionHead, Prototypes
from .mosic import MoSiCObjective
from .spacetime_kmeans import SpaceTimeKMeansObjective

__all__ = [
    "OBJECTIVES",
    "CompositeObjective",
    "CorrespondenceObjective",
    "MoSiCObjective",
    "Objective",
    "ObjectiveCard",
    "ObjectiveInputs",
    "ObjectiveOutput",
    "ProjectionHead",
    "Prototypes",
    "SpaceTimeKMeansObjective",
    "build_objective",
    "parse_objective_expression",
    "register_objective",
]
