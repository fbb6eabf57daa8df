"""The quickstart and paper-reproduction examples (smoke), every example's smoke test, and
docs/licences.md against the registries."""

import json
import math
import re

import pytest
import yaml
from conftest import ROOT, load_example, run_example

import mosic


@pytest.mark.slow
def test_quickstart_smoke(tmp_path):
    out = run_example("quickstart.py", "--out", str(tmp_path))
    trained = re.search(r"^trained eva-clip-b14: 4 steps, loss (\S+) -> (\S+), run folder", out, re.M)
    assert trained, out
    assert all(math.isfinite(float(v.rstrip(","))) for v in trained.groups())
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["backbone"]["name"] == "eva-clip-b14" and config["backbone"]["pretrained"] is False
    assert (tmp_path / "run" / "checkpoints" / "latest").is_file()

    # export: timm format, provenance says which backbone and run
    assert f"exported the teacher to {tmp_path / 'export'}" in out
    assert (tmp_path / "export" / "model.safetensors").is_file()
    provenance = json.loads((tmp_path / "export" / "mosic.json").read_text())
    assert provenance["backbone"] == "eva-clip-b14" and provenance["format"] == "timm" and provenance["step"] == 4

    # evaluation of the backbone before and of the export after, and their comparison
    reports = {p: json.loads((tmp_path / "eval" / p / "results.json").read_text()) for p in ("before", "after")}
    for report in reports.values():
        assert report["protocol"] == "video-clustering"
        assert {"dataset_miou", "clip_miou"} <= set(report["metrics"])
        assert all(0 <= v <= 100 for v in report["metrics"].values())
    assert "| metric | before | after | after - before |" in out
    for metric, value in reports["after"]["metrics"].items():
        assert re.search(rf"^\| {metric} \| [\d.]+ \| {value:.2f} \| [+-][\d.]+ \|$", out, re.M), (metric, out)
    assert re.search(r"^quickstart done in [\d.]+ s", out, re.M)


def test_quickstart_rejects_bad_arguments(tmp_path, capsys):
    quickstart = load_example("quickstart")
    for args, message in (
        ([], "folder of videos"),
        (["--smoke", "--weights", "w.safetensors"], "--smoke"),
        (["--smoke", str(tmp_path)], "--smoke"),
        (["--smoke", "--protocol", "knn"], "invalid choice"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            quickstart.main([*args, "--out", str(tmp_path)])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err, args


@pytest.mark.slow
def test_reproduce_paper_smoke(tmp_path):
    out = run_example("reproduce_paper.py", "--out", str(tmp_path))
    for step in ("[1/4] mosic track", "[2/4] mosic eval", "[3/4] mosic fit --config", "[4/4] mosic eval"):
        assert step in out, out
    recipe = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    assert recipe["backbone"]["name"] == "dinov2-b14" and recipe["tracker"]["cache"] == str(tmp_path / "cache")
    assert (tmp_path / "cache" / "manifest.json").is_file()
    assert (tmp_path / "run" / "checkpoints" / "latest").is_file()

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["preset"] == "dinov2-b14" and results["smoke"] and results["steps"] == 4 and not results["skipped"]
    protocols = ["in-context", "video-clustering", "overclustering", "linear", "label-propagation"]
    assert list(dict.fromkeys(r["protocol"] for r in results["rows"])) == protocols
    for row in results["rows"]:
        for key in ("before", "after"):
            assert math.isfinite(row[key]) and 0 <= row[key] <= 100, row
    # "after" is the trained teacher, not the starting backbone again
    assert any(row["after"] != row["before"] for row in results["rows"])
    for protocol in protocols:
        kind = "synthetic-video" if protocol in ("video-clustering", "label-propagation") else "synthetic"
        for phase in ("before", "after"):
            assert (tmp_path / "eval" / phase / f"{protocol}-{kind}" / "results.json").is_file()
        assert "| metric | before | after |" in (tmp_path / "eval" / "compare" / f"{protocol}-{kind}.md").read_text()

    table = (tmp_path / "results.md").read_text()
    assert "Not the paper's numbers" in table and table in out
    lines = [line for line in table.splitlines() if line.startswith(("| Table", "| extra"))]
    assert len(lines) == len(results["rows"])
    for line, row in zip(lines, results["rows"]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:4] == [row["table"], row["protocol"], row["data"], row["metric"]]
        assert float(cells[4]) == pytest.approx(row["before"], abs=0.005)
        assert float(cells[5]) == pytest.approx(row["after"], abs=0.005)


def test_reproduce_paper_arguments_and_rows(tmp_path, capsys):
    reproduce = load_example("reproduce_paper")
    for args, message in (
        ([], "--preset and --videos"),
        (["--preset", "dinov2-b14"], "--preset and --videos"),
        (["--preset", "dinov2-b41", "--videos", "v/"], "invalid choice"),
        (["--smoke", "--voc", "/data/VOC2012"], "no --videos"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            reproduce.main([*args, "--out", str(tmp_path)])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err, args

    # every protocol of the paper's tables, and only the rows whose dataset root is given
    from mosic.eval import PROTOCOLS
    from mosic.eval.overclustering import PAPER_OVERCLUSTERING

    assert {protocol for _, protocol, _, _ in reproduce.PAPER_EVALS} == set(PROTOCOLS)
    args = reproduce.parse_args(["--preset", "dinov2-s14", "--videos", "v/", "--davis", "/data/DAVIS", "--out", str(tmp_path)])
    rows, skipped = reproduce.evaluations(args)
    assert [(r["protocol"], r["data"]) for r in rows] == [
        ("video-clustering", "davis:/data/DAVIS"), ("label-propagation", "davis:/data/DAVIS")
    ]
    assert rows[0]["options"] == {"overcluster_k": {"frame": 10, "clip": 10, "dataset": 200}}
    assert len(skipped) == len(reproduce.PAPER_EVALS) - 2 and any("no --voc" in s for s in skipped)
    assert reproduce.paper_options("overclustering", "voc") == PAPER_OVERCLUSTERING
    config = reproduce.recipe(reproduce.parse_args(
        ["--preset", "eva-clip-b14", "--videos", "v/", "--weights", "w.safetensors", "--tracker-weights", "t.pth",
         "--out", str(tmp_path), "train.accumulation_steps=8"]
    ))  # fmt: skip
    assert config.backbone.name == "eva-clip-b14" and config.backbone.pretrained == "w.safetensors"
    assert config.tracker.kwargs["weights"] == "t.pth" and config.tracker.cache == str(tmp_path / "cache")
    assert config.train.accumulation_steps == 8 and config.train.epochs == 8  # the preset, plus the override


def test_every_example_has_a_smoke_test():
    """Each examples/*.py has a --smoke mode that some test runs with run_example."""
    examples = {path.name for path in (ROOT / "examples").glob("*.py")}
    exercised = set()
    for test in (ROOT / "tests").rglob("test_*.py"):
        exercised |= set(re.findall(r"run_example\(\s*[\"']([\w\-]+\.py)[\"']", test.read_text()))
    assert examples - exercised == set(), "examples without a smoke test (tests/system/test_examples_*.py, run_example)"
    assert exercised - examples == set(), "smoke tests of examples that do not exist"
    for name in examples:
        assert '"--smoke"' in (ROOT / "examples" / name).read_text(), f"{name} has no --smoke option"


# ---- docs/licences.md agrees with the registries ---------------------------------------------


def _licence_table() -> dict[str, str]:
    """registry name -> the licence cell of docs/licences.md's tables."""
    rows = {}
    for line in (ROOT / "docs" / "licences.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 3:
            for name in re.findall(r"`([\w.\-]+)`", cells[0]):
                rows[name] = cells[-1]
    return rows


def test_licences_doc_lists_every_backbone_with_its_card_licence():
    from mosic.backbones.catalog import CARDS

    table = _licence_table()
    for name, card in CARDS.items():
        assert name in table, f"{name} is missing from docs/licences.md"
        assert card.licence in table[name], (name, card.licence, table[name])


def test_licences_doc_lists_every_builtin_tracker():
    builtin = [name for name in mosic.list_trackers() if mosic.TRACKERS.get(name).factory.__module__.startswith("mosic.")]
    assert {"cotracker3", "cotracker3-online", "cotracker2", "raft", "raft-small", "lk", "oracle"} <= set(builtin)
    table = _licence_table()
    for name in builtin:
        assert name in table, f"tracker {name} is missing from docs/licences.md"
    for name in ("cotracker3", "cotracker3-online", "cotracker2"):
        assert "CC BY-NC 4.0" in table[name] and "non-commercial" in table[name]
    text = (ROOT / "docs" / "licences.md").read_text()
    assert "MIT" in text and "LICENSE" in text
