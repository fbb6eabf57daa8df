"""Loading the official CoTracker checkpoints (CoTracker3 and CoTracker2).

The checkpoints of facebookresearch/co-tracker are licensed **CC BY-NC 4.0
(non-commercial use only)**; mosic (MIT) does not bundle them. ``weights`` arguments:

* a path: a local ``.pth`` (read with ``torch.load(weights_only=True)``; a ``{"model": ...}``
  wrapper is removed) or ``.safetensors`` file, loaded strictly;
* ``None``: the official file from Hugging Face, through the torch hub cache
  (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``); a file
  already there is used without network access. ``HF_HUB_OFFLINE=1`` forbids the
  download. A licence note is printed (stderr) and logged the first time;
* ``False``: keep the random initialisation (tests).

A missing file that cannot be downloaded raises :class:`CoTrackerWeightsUnavailable`
(a ``RuntimeError``) that says how to pass a local file or to use the weight-free ``lk``
tracker instead.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch
from torch import nn

from ...backbones.weights import CONVERT_HINT, UnsafeWeightsError, load_state_dict_strict, read_state_dict
from ...errors import WeightsUnavailableError
from ..catalog import official_weights

__all__ = [
    "LICENCE_NOTE",
    "TRACKER_NAMES",
    "WEIGHT_URLS",
    "CoTrackerWeightsUnavailable",
    "download_state_dict",
    "load_cotracker_weights",
    "resolve_state_dict",
]

logger = logging.getLogger(__name__)

#: the registered tracker name of each model variant; its card (:mod:`mosic.trackers.catalog`)
#: records the official checkpoint's URL and checksum
TRACKER_NAMES = {
    "cotracker3_offline": "cotracker3",
    "cotracker3_online": "cotracker3-online",
    "cotracker2": "cotracker2",
}

#: official checkpoint of each model variant (read from the tracker cards)
WEIGHT_URLS = {variant: official_weights(name).url for variant, name in TRACKER_NAMES.items()}

LICENCE_NOTE = (
    "CoTracker weights (facebookresearch/co-tracker) are licensed CC BY-NC 4.0: "
    "non-commercial use only (https://creativecommons.org/licenses/by-nc/4.0/)."
)

_NOTED: set[str] = set()


class CoTrackerWeightsUnavailable(WeightsUnavailableError):
    """The official CoTracker weights are neither cached nor downloadable."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _cache_path(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _note_licence(url: str) -> None:
    if url in _NOTED:
        return
    _NOTED.add(url)
    message = f"mosic: using {url.rsplit('/', 1)[-1]}. {LICENCE_NOTE}"
    logger.warning(message)
    print(message, file=sys.stderr)


def _unavailable(variant: str, reason: str) -> CoTrackerWeightsUnavailable:
    url = WEIGHT_URLS[variant]
    filename = url.rsplit("/", 1)[-1]
    name = TRACKER_NAMES[variant]
    return CoTrackerWeightsUnavailable(
        f"the {name!r} tracker needs the official weights {filename}, which {reason}. "
        f"Download {url} on a machine with internet access (licence CC BY-NC 4.0, non-commercial) "
        f"and pass the file: mosic.create_tracker({name!r}, weights=\"/path/{filename}\") "
        f"(or set tracker.kwargs.weights in the run config), or copy it to {_cache_path(url)}. "
        "Without these weights use the weight-free Lucas-Kanade tracker: mosic.create_tracker(\"lk\")."
    )


def _unwrap(obj: object, source: str) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{source} does not contain a state dict (name -> tensor)")
    return obj


def _check_variant(variant: object) -> None:
    if not isinstance(variant, str) or variant not in WEIGHT_URLS:
        raise ValueError(f"unknown CoTracker variant {variant!r}; known: {', '.join(WEIGHT_URLS)}")


def download_state_dict(variant: str, progress: bool = True) -> dict[str, torch.Tensor]:
    """The official state dict of ``variant`` (a key of :data:`WEIGHT_URLS`), cached or downloaded,
    checked against the sha256 on the tracker's card when the card records one.

    A cached file is read like a local one (:func:`~mosic.backbones.weights.read_state_dict`:
    safetensors or ``torch.load(weights_only=True)``; a pickle needing code is refused)."""
    _check_variant(variant)
    url = WEIGHT_URLS[variant]
    cached = _cache_path(url)
    card_weights = official_weights(TRACKER_NAMES[variant])
    if cached.is_file():
        _note_licence(url)
        card_weights.verify(cached)
        return read_state_dict(cached)
    if _offline():
        raise _unavailable(variant, f"are not in the torch hub cache ({cached}) and HF_HUB_OFFLINE=1 forbids downloads")
    _note_licence(url)
    try:
        state = torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=progress, weights_only=True, file_name=cached.name
        )
    except Exception as exc:  # URLError, HTTPError, timeouts, a corrupt partial file
        if "weights only load failed" in str(exc).lower():
            raise UnsafeWeightsError(
                f"refusing to load {cached} (downloaded from {url}): it is a pickle that needs arbitrary code "
                "to unpickle, which mosic never does. Delete the file and download it again, or pass a local "
                "file you trust converted to safetensors. " + CONVERT_HINT
            ) from exc
        raise _unavailable(variant, f"could not be downloaded ({type(exc).__name__}: {exc})") from exc
    if cached.is_file():
        card_weights.verify(cached)
    return _unwrap(state, url)


def resolve_state_dict(
    weights: str | os.PathLike | None, variant: str, progress: bool = True
) -> dict[str, torch.Tensor]:
    """A state dict from a local file (``weights`` a path) or the official download (``None``)."""
    _check_variant(variant)
    if weights is None:
        return download_state_dict(variant, progress=progress)
    if isinstance(weights, (str, os.PathLike)):
        return read_state_dict(weights)
    raise TypeError(
        f"weights must be None (official download), a path to a .pth/.safetensors file or False (random), "
        f"got {type(weights).__name__}"
    )


def load_cotracker_weights(
    model: nn.Module, weights: str | os.PathLike | bool | None, variant: str, progress: bool = True
) -> nn.Module:
    """Load ``weights`` into ``model`` strictly (see the module docstring); ``False`` keeps it random.

    Mismatched files fail with the list of missing, unexpected and mis-shaped keys.
    """
    _check_variant(variant)
    if weights is False:
        return model
    if weights is True:
        weights = None
    state = resolve_state_dict(weights, variant, progress=progress)
    source = str(weights) if weights is not None else WEIGHT_URLS[variant]
    expected = WEIGHT_URLS[variant].rsplit("/", 1)[-1]
    hint = (
        f"The {TRACKER_NAMES[variant]!r} tracker expects the official {expected} "
        f"({WEIGHT_URLS[variant]}): scaled_offline.pth is for 'cotracker3', scaled_online.pth for "
        "'cotracker3-online' (their time_emb differ), cotracker2.pth for 'cotracker2'."
    )
    load_state_dict_strict(model, state, source, hint=hint)
    return model
