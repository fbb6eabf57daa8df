"""The cards of the built-in trackers (see :class:`~mosic.trackers.card.TrackerCard`).

Each tracker module registers its names with these cards, e.g.
``@register_tracker("raft", model="large", card=CARDS["raft"])``; the weight download
code reads the URLs and checksums from here (:func:`official_weights`).
"""

from __future__ import annotations

from .card import TrackerCard, TrackerInput, TrackerWeights

__all__ = ["CARDS", "COTRACKER_LICENCE", "official_weights"]

COTRACKER_LICENCE = "CC BY-NC 4.0: non-commercial use only (https://creativecommons.org/licenses/by-nc/4.0/)"
_RAFT_LICENCE = (
    "trained on FlyingChairs + FlyingThings3D (no KITTI data), whose terms apply; torchvision's code is "
    "BSD-3-Clause, and torchvision notes that its pretrained weights may carry terms derived from their training data"
)
_COTRACKER3_PAPER = (
    "Karaev et al., CoTracker3: Simpler and Better Point Tracking by Pseudo-Labelling Real Videos, 2024 (arXiv:2410.11831)"
)
_COTRACKER_PAPER = "Karaev et al., CoTracker: It is Better to Track Together, ECCV 2024 (arXiv:2307.07635)"
_RAFT_PAPER = "Teed and Deng, RAFT: Recurrent All-Pairs Field Transforms for Optical Flow, ECCV 2020 (arXiv:2003.12039)"
_COTRACKER_INPUT = TrackerInput(
    resolution="resized to 384x512 (model_resolution, the checkpoints' training size; bilinear, align_corners=True)",
    model_input="float 0..255, normalised to [-1, 1] inside the model",
)
_RAFT_INPUT = TrackerInput(
    resolution="the input rounded up to multiples of 8, scaled up so that the short side is >= 128 px (size=)",
    model_input="float in [-1, 1] (bilinear resize, antialiased when shrinking)",
)

CARDS: dict[str, TrackerCard] = {
    card.name: card
    for card in (
        TrackerCard(
            name="cotracker3",
            family="cotracker",
            description="CoTracker3 offline (mosic's implementation, the official checkpoint); the paper's tracker",
            mode="offline",
            input=_COTRACKER_INPUT,
            weights=TrackerWeights(
                url="https://huggingface.co/facebook/cotracker3/resolve/main/scaled_offline.pth",
                description="CoTracker3 offline, window 60 (Kubric + pseudo-labelled real videos)",
            ),
            licence=COTRACKER_LICENCE,
            paper=_COTRACKER3_PAPER,
            notes="visible = vis > 0.9 (the authors' threshold); mosic adds a 6x6 support grid (theirs has none: "
            "tracker.kwargs.support_grid_size=0); queries snapped.",
        ),
        TrackerCard(
            name="cotracker3-online",
            family="cotracker",
            description="CoTracker3 online: sliding windows of 16 frames every 8, in one call",
            mode="online",
            input=_COTRACKER_INPUT,
            weights=TrackerWeights(
                url="https://huggingface.co/facebook/cotracker3/resolve/main/scaled_online.pth",
                description="CoTracker3 online, window 16 (Kubric + pseudo-labelled real videos)",
            ),
            licence=COTRACKER_LICENCE,
            paper=_COTRACKER3_PAPER,
            notes="visible = vis * conf > 0.6; no support grid.",
        ),
        TrackerCard(
            name="cotracker2",
            family="cotracker",
            description="CoTracker2: virtual tracks, sliding windows of 8 frames every 4",
            mode="online",
            input=_COTRACKER_INPUT,
            weights=TrackerWeights(
                url="https://huggingface.co/facebook/cotracker/resolve/main/cotracker2.pth",
                description="CoTracker2 (Kubric)",
            ),
            licence=COTRACKER_LICENCE,
            paper=_COTRACKER_PAPER,
            notes="visible = vis > 0.6 (the official online predictor).",
        ),
        TrackerCard(
            name="raft",
            family="raft",
            description="torchvision RAFT-large flow chained frame to frame with a forward-backward check",
            mode="online",
            input=_RAFT_INPUT,
            weights=TrackerWeights(
                url="https://download.pytorch.org/models/raft_large_C_T_V2-1bb1363a.pth",
                sha256="1bb1363a",
                description="torchvision Raft_Large_Weights.C_T_V2, 5.3 M parameters (FlyingChairs + FlyingThings3D)",
            ),
            licence=_RAFT_LICENCE,
            paper=_RAFT_PAPER,
            notes="A lost point stays invisible (chained flow cannot re-detect it).",
        ),
        TrackerCard(
            name="raft-small",
            family="raft",
            description="torchvision RAFT-small flow chained frame to frame with a forward-backward check",
            mode="online",
            input=_RAFT_INPUT,
            weights=TrackerWeights(
                url="https://download.pytorch.org/models/raft_small_C_T_V2-01064c6d.pth",
                sha256="01064c6d",
                description="torchvision Raft_Small_Weights.C_T_V2, 1.0 M parameters (FlyingChairs + FlyingThings3D)",
            ),
            licence=_RAFT_LICENCE,
            paper=_RAFT_PAPER,
            notes="A lost point stays invisible (chained flow cannot re-detect it).",
        ),
        TrackerCard(
            name="lk",
            family="lucas-kanade",
            description="pyramidal Lucas-Kanade (OpenCV) with a forward-backward check, CPU",
            mode="online",
            input=TrackerInput(
                resolution="the input resolution (no resize)",
                model_input="uint8 grayscale (cv2.COLOR_RGB2GRAY)",
            ),
            licence="no weights",
            paper=(
                "Bouguet, Pyramidal Implementation of the Affine Lucas Kanade Feature Tracker, Intel 2001; "
                "Lucas and Kanade, IJCAI 1981"
            ),
            notes="Weight-free: the tracker to use without network access or for commercial work.",
        ),
        TrackerCard(
            name="oracle",
            family="oracle",
            description="the exact ground-truth tracks of synthetic clips (mosic.data.SyntheticVideos)",
            mode="offline",
            input=TrackerInput(
                resolution="any (the pixels are not read)",
                model_input="none: reads the clips' ground truth",
                needs_clip_metadata=True,
            ),
            licence="no weights",
            paper="none (synthetic ground truth)",
        ),
    )
}


def official_weights(name: str) -> TrackerWeights:
    """The official weights on the card of the built-in tracker ``name``."""
    weights = CARDS[name].weights
    if weights is None:
        raise ValueError(f"the {name!r} tracker has no weights")
    return weights
