"""Evaluation reports (mosic.eval.report): JSON, markdown and comparison."""

import json

import numpy as np
import pytest

from mosic.eval.report import compare_reports, make_report, read_report, write_report


def test_report_round_trip_markdown_and_comparison(tmp_path):
    a = make_report("overclustering", "vit-tiny", "synthetic", {"miou": 40.0, "k100/miou": 50.5}, {"seed": 0},
                    {"iou_per_class": np.array([1.0, 2.0])}, seconds=1.5)
    b = make_report("overclustering", "runs/x (teacher)", "synthetic", {"miou": 43.25, "k100/miou": 49.5})
    path = write_report(a, tmp_path / "a")
    assert json.loads(path.read_text())["details"]["iou_per_class"] == [1.0, 2.0]
    assert "| miou | 40.00 |" in (tmp_path / "a" / "results.md").read_text()
    assert read_report(tmp_path / "a")["metrics"] == a["metrics"]
    table = compare_reports(read_report(tmp_path / "a"), b)
    assert "| miou | 40.00 | 43.25 | +3.25 |" in table
    assert "| k100/miou | 50.50 | 49.50 | -1.00 |" in table
    with pytest.raises(TypeError, match="scalars"):
        make_report("p", "b", "d", {"per_class": [1, 2]})
    with pytest.raises(FileNotFoundError, match="results.json"):
        read_report(tmp_path / "missing")
