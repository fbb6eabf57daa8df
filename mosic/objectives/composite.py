"""Weighted sums of objectives, and building an objective from the run config.

``objective.name`` may be one registered name or a weighted sum of them, e.g.
``"mosic + 0.1 correspondence"`` or ``"1.0*mosic + 0.5*spacetime-kmeans"`` (the
correspondence paper's eq. 16 combines its losses this way). The sum is a
:class:`CompositeObjective`: the student runs on the union of the terms' frames (and on
the view when a term asks for one), each term scores its own head(s), and the loss is
``sum_i w_i * loss_i``; metrics are reported per term as ``"<term>/<metric>"``.

``correspondence`` already weighs its short- and long-term parts with the paper's
lambda1 = 0.1 and lambda2 = 0.5, so ``"mosic + correspondence"`` is that paper's eq. 16
with MoSiC in the place of its segmentation loss; a weight in front scales both parts.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..data.transforms import ViewTransform
from ..config import parse_objective_expression
from .base import OBJECTIVES, Objective, ObjectiveInputs, ObjectiveOutput

def is_composite(expression: str) -> bool:
    terms = parse_objective_expression(expression)
    return len(terms) > 1 or terms[0][0] != 1.0


class CompositeObjective(Objective):
    """``sum_i weight_i * term_i``.

    Args:
        terms: (weight, name, objective) triples; names key the metrics and
            ``self.terms`` (and so the checkpoint keys, ``objective.terms.<name>.*``).
    """

    def __init__(self, terms: Sequence[tuple[float, str, Objective]]):
        super().__init__()
        if not terms:
            raise ValueError("a composite objective needs at least one term")
        for weight, name, term in terms:
            if weight < 0:
                raise ValueError(f"the weight of {name!r} must be >= 0, got {weight}")
            if not isinstance(term, Objective):
                raise TypeError(f"term {name!r} must be an Objective, got {type(term).__name__}")
        self.terms = nn.ModuleDict({name: term for _, name, term in terms})
        self.weights = {name: float(weight) for weight, name, _ in terms}
        self.student_frames = tuple(sorted({t for _, _, term in terms for t in term.student_frames}))
        self.uses_tracks = any(term.uses_tracks for _, _, term in terms)
        self.student_view = any(term.student_view for _, _, term in terms)
        viewers = [name for _, name, term in terms if term.student_view]
        if len(viewers) > 1:
            raise ValueError(
                f"terms {viewers} each ask for a student view; the student runs on one view per clip, "
                "so only one term of a sum may use it"
            )

    def sample_views(self, seeds: Sequence[int], height: int, width: int) -> list[ViewTransform] | None:
        for term in self.terms.values():
            if term.student_view:
                return term.sample_views(seeds, height, width)
        return None

    def forward(self, inputs: ObjectiveInputs, teacher: "CompositeObjective") -> ObjectiveOutput:
        loss = None
        metrics: dict[str, torch.Tensor] = {}
        total = None
        for name, term in self.terms.items():
            out = term(inputs, teacher=teacher.terms[name])
            weight = self.weights[name]
            loss = weight * out.loss if loss is None else loss + weight * out.loss
            for key, value in out.metrics.items():
                metrics[f"{name}/{key}"] = value
            term_loss = out.metrics.get("loss", out.loss.detach())
            total = weight * term_loss if total is None else total + weight * term_loss
        metrics["loss"] = total
        return ObjectiveOutput(loss=loss, metrics=metrics)

    def after_optimizer_step(self) -> None:
        for term in self.terms.values():
            term.after_optimizer_step()

    def extra_repr(self) -> str:
        return " + ".join(f"{w:g}*{n}" for n, w in self.weights.items())


def build_objective(
    name: str, embed_dim: int, fields: dict[str, Any] | None = None, kwargs: dict[str, Any] | None = None
) -> Objective:
    """The objective a config names: one registered name or a weighted sum.

    ``fields`` are the shared config values (``num_prototypes``, ``temperature``, ...);
    each objective receives those its factory accepts by name (all of them if it takes
    ``**kwargs``). ``kwargs`` are passed as they are for a single objective; for a sum
    they must be keyed by term name (``{"correspondence": {"long_term_gap": 3}}``).
    """
    fields, kwargs = dict(fields or {}), dict(kwargs or {})
    terms = parse_objective_expression(name)
    if len(terms) == 1 and terms[0][0] == 1.0:
        return _create(terms[0][1], embed_dim, fields, kwargs)
    names = [n for _, n in terms]
    canonical = [OBJECTIVES.canonical(n) if n in OBJECTIVES else n for n in names]
    if len(set(canonical)) != len(canonical):
        raise ValueError(
            f"the objective {name!r} names a term twice (aliases: {OBJECTIVES.aliases()}); merge the weights"
        )
    stray = [k for k in kwargs if k not in names]
    if stray:
        raise ValueError(
            f"objective.kwargs of the sum {name!r} must be keyed by term ({', '.join(names)}), "
            f"got {stray}; e.g. objective.kwargs.{names[-1]}.<argument>=value"
        )
    built = []
    for weight, term in terms:
        extra = kwargs.get(term, {})
        if not isinstance(extra, dict):
            raise ValueError(f"objective.kwargs.{term} must be a mapping of arguments, got {extra!r}")
        built.append((weight, term, _create(term, embed_dim, fields, extra)))
    total = CompositeObjective(built)
    total.name = name.strip()  # the expression; each term keeps its registry name
    return total


def _create(name: str, embed_dim: int, fields: dict[str, Any], kwargs: dict[str, Any]) -> Objective:
    entry = OBJECTIVES.get(name)
    accepted = inspect.signature(entry.factory).parameters
    takes_all = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    chosen = {k: v for k, v in fields.items() if (takes_all or k in accepted) and k not in kwargs}
    return OBJECTIVES.create(name, embed_dim=embed_dim, **chosen, **kwargs)
