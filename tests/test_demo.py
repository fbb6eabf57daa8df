import json
import math

from mosic.demo import format_results, run_demo


def test_demo_runs_end_to_end_in_smoke_mode(tmp_path):
    results = run_demo(tmp_path, steps=3, train_videos=8, eval_videos=3, progress=False)
    assert results["steps"] == 3
    for phase in ("before", "after"):
        assert all(0 <= results[phase][k] <= 100 and math.isfinite(results[phase][k]) for k in results[phase])
    assert json.loads((tmp_path / "demo_results.json").read_text()) == results
    assert (tmp_path / "checkpoints" / "latest").is_file()
    assert "before post-pretraining" in format_results(results)
