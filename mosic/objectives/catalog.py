"""The cards of the built-in objectives (see :class:`~mosic.objectives.card.ObjectiveCard`).

Each objective module registers its names with these cards, e.g.
``@register_objective("mosic-still", aliases=("static",), target="still", card=CARDS["mosic-still"])``.
"""

from __future__ import annotations

from .card import ObjectiveCard

__all__ = ["CARDS"]

_MOSIC = (
    "Salehi et al., MoSiC: Optimal-Transport Motion Trajectory for Dense Self-Supervised Learning, "
    "ICCV 2025 (arXiv:2506.08694)"
)
_MASK_EMBEDDING = (
    "Li et al., Unified Mask Embedding and Correspondence Learning for Self-Supervised Video Segmentation, CVPR 2023"
)

CARDS: dict[str, ObjectiveCard] = {
    card.name: card
    for card in (
        ObjectiveCard(
            name="mosic",
            description="teacher's Sinkhorn cluster at the tracked position in frame t, predicted by the "
            "student's frame-0 scores (cross-entropy over visible entries)",
            uses_tracks=True,
            student_frames=(0,),
            paper=_MOSIC,
            notes="The authors' code (target='tracked'); the default objective.",
        ),
        ObjectiveCard(
            name="mosic-propagated",
            description="teacher's frame-0 Sinkhorn cluster carried unchanged along the track",
            uses_tracks=True,
            student_frames=(0,),
            paper=_MOSIC,
            notes="The paper's eq. 8 read literally (target='propagated').",
        ),
        ObjectiveCard(
            name="mosic-still",
            description="MoSiC's loss on a still clip: every track held at its query point, visible everywhere",
            uses_tracks=False,
            student_frames=(0,),
            paper=_MOSIC,
            notes="The no-motion baseline (target='still'), formerly named 'static' (still accepted).",
        ),
        ObjectiveCard(
            name="spacetime-kmeans",
            description="per-clip space-time k-means pseudo masks of the teacher, predicted through cross-frame affinity",
            uses_tracks=False,
            student_frames=(0,),
            paper=_MASK_EMBEDDING + ", section 3.1",
        ),
        ObjectiveCard(
            name="correspondence",
            description="short-term (eq. 12) and long-term (eq. 15) equivariant contrastive matching",
            uses_tracks=False,
            student_frames=(),
            student_view=True,
            paper=_MASK_EMBEDDING + ", section 3.2",
        ),
    )
}
