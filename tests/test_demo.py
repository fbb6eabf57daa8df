import json
import math

from mosic.demo import EVAL_WORLD, METRICS, OBJECTIVES, TRAIN_WORLD, format_results, run_demo


def test_demo_compares_the_start_mosic_and_no_motion_on_an_unseen_world(tmp_path):
    results = run_demo(tmp_path, steps=3, train_videos=8, eval_videos=3, progress=False)
    assert results["steps"] == 3 and results["start"] == "random init"
    assert list(results["runs"]) == ["start", *OBJECTIVES] == ["start", "mosic", "mosic-still"]
    for run in results["runs"].values():
        assert all(0 <= run[m] <= 100 and math.isfinite(run[m]) for m in METRICS)
    assert json.loads((tmp_path / "demo_results.json").read_text()) == results
    for objective in OBJECTIVES:
        assert (tmp_path / objective / "checkpoints" / "latest").is_file()
    table = format_results(results)
    assert "start (random init)" in table and "`mosic-still`, 3 steps" in table and "label propagation J&F" in table


def test_the_evaluation_world_is_not_the_training_world():
    assert EVAL_WORLD["seed"] != TRAIN_WORLD["seed"]
    assert EVAL_WORLD["speed"] != 1.0 and EVAL_WORLD["object_size"] != (0.12, 0.25)
