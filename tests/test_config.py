import json

import pytest

from mosic.config import ConfigError, RunConfig


def test_defaults_are_the_papers():
    cfg = RunConfig()
    assert (cfg.objective.num_prototypes, cfg.objective.projection_dim) == (100, 256)
    assert (cfg.objective.sinkhorn_epsilon, cfg.objective.sinkhorn_iterations, cfg.objective.temperature) == (0.05, 10, 0.1)
    assert (cfg.data.num_frames, cfg.tracker.grid_size, cfg.data.crop_scale) == (12, 16, (0.4, 1.0))
    assert (cfg.optim.backbone_lr, cfg.optim.head_lr, cfg.train.ema_momentum) == (1e-5, 1e-4, 0.99)
    assert (cfg.backbone.train_blocks, cfg.train.mask_ratio, cfg.train.epochs) == (2, 0.1, 8)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip_through_a_file(tmp_path, suffix):
    cfg = RunConfig().with_overrides({"train.max_steps": 7, "backbone.kwargs": {"depth": 3}, "crop_scale": [0.5, 0.9]})
    path = tmp_path / f"run{suffix}"
    cfg.save(path)
    assert RunConfig.from_file(path) == cfg
    if suffix == ".json":
        assert json.loads(path.read_text())["train"]["max_steps"] == 7


def test_overrides_from_the_command_line_and_bare_names():
    cfg = RunConfig().with_overrides(["train.max_steps=12", "objective.head_hidden_dims=[64, 64]", "ema=false"])
    assert cfg.train.max_steps == 12 and cfg.objective.head_hidden_dims == [64, 64] and cfg.train.ema is False
    assert RunConfig().with_overrides({"global_batch_size": 8}).data.global_batch_size == 8


def test_unknown_keys_are_rejected_readably(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  num_frame: 8\n")
    with pytest.raises(ConfigError, match=r"data\.num_frame: unknown key"):
        RunConfig.from_file(path)
    with pytest.raises(ConfigError, match="did you mean num_frames"):
        RunConfig().with_overrides({"data.num_frame": 8})
    with pytest.raises(ConfigError, match="ambiguous"):
        RunConfig().with_overrides({"name": "x"})
    with pytest.raises(ConfigError, match="section"):
        RunConfig().with_overrides(["model.depth=2"])


def test_bad_values_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.mask_ratio"):
        RunConfig.from_dict({"train": {"mask_ratio": 1.5}})
    with pytest.raises(ConfigError, match="crop_scale"):
        RunConfig.from_dict({"data": {"crop_scale": [0.9, 0.2]}})
    not_a_mapping = tmp_path / "list.yaml"
    not_a_mapping.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        RunConfig.from_file(not_a_mapping)


def test_kwargs_entries_are_set_one_by_one():
    config = RunConfig().with_overrides(["tracker.kwargs.weights=/w/scaled_offline.pth", "backbone.kwargs.depth=2"])
    config = config.with_overrides({"backbone.kwargs.embed_dim": 64})
    assert config.tracker.kwargs == {"weights": "/w/scaled_offline.pth"}
    assert config.backbone.kwargs == {"depth": 2, "embed_dim": 64}
    with pytest.raises(ConfigError, match="did you mean tracker"):
        RunConfig().with_overrides(["trackr.kwargs.weights=x"])
