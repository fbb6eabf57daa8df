"""Evaluation reports: results as JSON and a markdown table, and the difference of two.

A report is a JSON-able dict::

    {"protocol": "overclustering", "backbone": "runs/a (teacher)", "dataset": "...",
     "settings": {...}, "metrics": {"miou": 41.2, "k100/miou": 55.0, ...},
     "details": {...}, "seconds": 12.3, "mosic_version": "...", "created": "..."}

``metrics`` holds the scalar headline numbers (percent where they are rates); anything
larger (per-class IoU, per-video scores) goes in ``details``. :func:`write_report`
writes ``results.json`` and ``results.md`` into a folder; :func:`compare_reports`
prints metric by metric the values of two reports and their difference.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any


def make_report(
    protocol: str,
    backbone: str,
    dataset: str,
    metrics: dict[str, float],
    settings: dict[str, Any] | None = None,
    details: dict[str, Any] | None = None,
    seconds: float | None = None,
) -> dict:
    from ..version import __version__

    bad = {k: v for k, v in metrics.items() if not isinstance(v, (int, float))}
    if bad:
        raise TypeError(f"metrics must be scalars (put the rest in details), got {sorted(bad)}")
    return {
        "protocol": protocol,
        "backbone": backbone,
        "dataset": dataset,
        "settings": settings or {},
        "metrics": {k: float(v) for k, v in metrics.items()},
        "details": details or {},
        "seconds": seconds,
        "mosic_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def format_markdown(report: dict) -> str:
    """A heading with what was evaluated, then a metric | value table."""
    lines = [
        f"# {report['protocol']}: {report['backbone']}",
        "",
        f"dataset: {report['dataset']}",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in report["metrics"].items()]
    if report.get("settings"):
        lines += ["", "settings: " + ", ".join(f"{k}={v}" for k, v in report["settings"].items())]
    if report.get("seconds") is not None:
        lines += ["", f"wall time: {report['seconds']:.1f} s"]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str | Path) -> Path:
    """Write ``results.json`` and ``results.md`` into ``out_dir``; returns the JSON path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    (out / "results.md").write_text(format_markdown(report))
    return out / "results.json"


def read_report(path: str | Path) -> dict:
    """A report from its ``results.json`` or the folder holding it."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"no evaluation report at {path} (`mosic eval ... --out DIR` writes DIR/results.json)")
    report = json.loads(path.read_text())
    if not isinstance(report, dict) or "metrics" not in report:
        raise ValueError(f"{path} is not a mosic evaluation report (no 'metrics')")
    return report


def compare_reports(a: dict, b: dict, names: tuple[str, str] = ("A", "B")) -> str:
    """Markdown table of every metric of ``a`` and ``b`` and the difference b - a."""
    if a.get("protocol") != b.get("protocol"):
        note = f"\nnote: different protocols ({a.get('protocol')} vs {b.get('protocol')})\n"
    else:
        note = ""
    lines = [
        f"{names[0]}: {a['backbone']} ({a['protocol']}, {a['dataset']})",
        f"{names[1]}: {b['backbone']} ({b['protocol']}, {b['dataset']})",
        note,
        f"| metric | {names[0]} | {names[1]} | {names[1]} - {names[0]} |",
        "|---|---|---|---|",
    ]
    for key in list(dict.fromkeys([*a["metrics"], *b["metrics"]])):
        va, vb = a["metrics"].get(key), b["metrics"].get(key)
        diff = vb - va if va is not None and vb is not None else None
        lines.append(f"| {key} | {_fmt(va)} | {_fmt(vb)} | {_fmt(diff, signed=True)} |")
    return "\n".join(line for line in lines if line is not None) + "\n"


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
