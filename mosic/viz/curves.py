"""Training curves from a run's ``metrics.jsonl`` (one JSON record per logged step), as PNG."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

from ..checks import is_real

#: what :func:`plot_curves` draws by default (those present in the file)
DEFAULT_KEYS = ("loss", "agreement", "grad_norm", "lr_backbone")


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file, or of the one in a run folder.

    Lines that are not JSON objects (a run killed mid-write) are skipped with a warning.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path} (a run folder holds metrics.jsonl once it has logged a step)")
    records, bad = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                bad += 1
    if bad:
        warnings.warn(f"{path}: skipped {bad} line(s) that are not JSON records", stacklevel=2)
    if not records:
        raise ValueError(f"{path} holds no metrics records")
    return records


def _numeric(value) -> bool:
    return is_real(value)


def metric_keys(records: Sequence[dict]) -> list[str]:
    """Numeric keys of the records besides ``step``, in first-seen order."""
    keys: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if key != "step" and _numeric(value):
                keys.setdefault(key)
    return list(keys)


def plot_curves(
    metrics,
    out_png: str | Path,
    keys: Sequence[str] | None = DEFAULT_KEYS,
    *,
    size: tuple[int, int] | None = None,
    dpi: int = 100,
    smooth: float = 0.9,
    title: str | None = None,
) -> Path:
    """One subplot per metric against the step, written as a PNG.

    Args:
        metrics: a ``metrics.jsonl`` path, a run folder, or a list of records.
        keys: metrics to draw. With the default, those of :data:`DEFAULT_KEYS` the file
            has; ``None`` or ``"all"``: every numeric metric; explicit names must exist.
        size: (width, height) of the PNG in pixels (default: 900 wide, 220 per subplot).
        smooth: exponential moving average weight of a smoothed line drawn over the raw
            one when there are more than 20 points (0: no smoothed line).
    Returns:
        The PNG path.
    """
    from matplotlib.figure import Figure  # no pyplot: renders with Agg, leaves the user's backend alone

    records = list(metrics) if isinstance(metrics, (list, tuple)) else read_metrics(metrics)
    if not records:
        raise ValueError("plot_curves: no metrics records")
    available = metric_keys(records)
    if keys is None or keys == "all":
        chosen = available
    elif isinstance(keys, str):
        raise ValueError(f"plot_curves: keys must be a sequence of names or 'all', got {keys!r}")
    elif tuple(keys) == DEFAULT_KEYS:
        chosen = [k for k in DEFAULT_KEYS if k in available]
    else:
        missing = [k for k in keys if k not in available]
        if missing:
            raise ValueError(f"plot_curves: no metric {', '.join(missing)}; the file has {', '.join(available) or 'none'}")
        chosen = list(keys)
    if not chosen:
        raise ValueError(f"plot_curves: none of {', '.join(keys)} is in the metrics; they have {', '.join(available)}")
    if size is None:
        size = (900, 60 + 220 * len(chosen))
    width, height = size
    if width < 100 or height < 100:
        raise ValueError(f"plot_curves: size must be at least 100 x 100 pixels, got {width} x {height}")
    if not 0.0 <= smooth < 1.0:
        raise ValueError(f"plot_curves: smooth must be in [0, 1), got {smooth}")

    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    axes = figure.subplots(len(chosen), 1, sharex=True, squeeze=False)[:, 0]
    for ax, key in zip(axes, chosen):
        points = [
            (r.get("step", i + 1), float(r[key])) for i, r in enumerate(records) if _numeric(r.get(key))
        ]
        steps = [s for s, _ in points]
        values = [v for _, v in points]
        ax.plot(steps, values, color="tab:blue", alpha=0.45 if smooth and len(values) > 20 else 1.0,
                linewidth=1.0, marker="o" if len(values) <= 20 else None, markersize=3)
        if smooth and len(values) > 20:
            ax.plot(steps, _ema(values, smooth), color="tab:blue", linewidth=1.6)
        ax.set_ylabel(key)
        ax.grid(True, color="0.85", linewidth=0.6)
        finite = [v for v in values if math.isfinite(v)]
        if key.startswith("lr") and finite and min(finite) > 0:
            ax.set_yscale("log")
    axes[-1].set_xlabel("step")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    out_png = Path(out_png)
    if out_png.suffix.lower() != ".png":
        raise ValueError(f"plot_curves writes PNG; give an output ending in .png, got {out_png}")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=dpi, facecolor="white")
    return out_png


def _ema(values: Sequence[float], weight: float) -> list[float]:
    out, avg = [], None
    for v in values:
        if not math.isfinite(v):
            out.append(float("nan"))
            continue
        avg = v if avg is None else weight * avg + (1 - weight) * v
        out.append(avg)
    return out
