"""Loading local weight files safely and strictly."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

_WRAPPER_KEYS = ("state_dict", "model", "module", "teacher", "student")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file or a ``.pth``/``.pt``/``.bin`` file.

    Pickle files are read with ``torch.load(weights_only=True)``: a file that needs
    arbitrary code to unpickle is refused. Common wrappers (``{"model": ...}``,
    ``{"state_dict": ...}``) and DDP's ``module.`` prefix are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError and friends
        raise ValueError(
            f"refusing to load {path}: it is not a plain tensor checkpoint readable with "
            f"torch.load(weights_only=True) ({type(exc).__name__}: {exc}). Convert it to "
            "safetensors in a trusted environment."
        ) from exc
    while isinstance(obj, dict) and len(obj) == 1 and next(iter(obj)) in _WRAPPER_KEYS:
        obj = next(iter(obj.values()))
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not contain a state dict (name -> tensor)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def load_state_dict_strict(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, hint: str | None = None
) -> None:
    """``model.load_state_dict(state, strict=True)`` with an error that lists the problems.

    ``hint`` ends the error message (by default: check the architecture and the key format).
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if own[k].shape != state[k].shape
    )
    if missing or unexpected or mismatched:
        parts = [f"weights from {source} do not match {type(model).__name__}:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                shown = ", ".join(items[:10]) + (f", ... ({len(items)} in all)" if len(items) > 10 else "")
                parts.append(f"  {title} keys: {shown}")
        parts.append(
            hint
            or f"Check that the architecture matches the checkpoint and that the file is in {type(model).__name__}'s "
            "key format (Backbone.load_weights detects and converts the formats of mosic.backbones.formats)."
        )
        raise ValueError("\n".join(parts))
    model.load_state_dict(state, strict=True)


def load_state_dict_file(model: nn.Module, path: str | Path) -> None:
    """Strictly load a local weights file into ``model``."""
    load_state_dict_strict(model, read_state_dict(path), str(path))
