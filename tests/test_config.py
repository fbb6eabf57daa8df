import json
import math
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mosic
from helpers.fuzz import FUZZ
from mosic.config import ConfigError, RunConfig, list_presets


def test_defaults_are_the_papers():
    cfg = RunConfig()
    assert (cfg.objective.num_prototypes, cfg.objective.projection_dim) == (100, 256)
    assert (cfg.objective.sinkhorn_epsilon, cfg.objective.sinkhorn_iterations, cfg.objective.temperature) == (0.05, 10, 0.1)
    assert (cfg.data.num_frames, cfg.tracker.grid_size, cfg.data.crop_scale) == (12, 16, (0.4, 1.0))
    assert (cfg.optim.backbone_lr, cfg.optim.head_lr, cfg.train.ema_momentum) == (1e-5, 1e-4, 0.99)
    assert (cfg.backbone.train_blocks, cfg.train.mask_ratio, cfg.train.epochs) == (2, 0.1, 8)
    assert (cfg.objective.teacher_read, cfg.objective.head_init) == ("bilinear", "trunc_normal")  # paper; mosic


def test_the_authors_teacher_read_and_head_init_are_one_override_away():
    cfg = RunConfig().with_overrides(["objective.teacher_read=nearest", "objective.head_init=pytorch"])
    assert (cfg.objective.teacher_read, cfg.objective.head_init) == ("nearest", "pytorch")
    with pytest.raises(ConfigError, match=r"objective\.teacher_read"):
        RunConfig().with_overrides({"objective.teacher_read": "bicubic"})
    with pytest.raises(ConfigError, match=r"objective\.head_init"):
        RunConfig().with_overrides({"objective.head_init": "xavier"})


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


# ---- fuzzing (hypothesis, tests/helpers/fuzz.py): every field set to any value either gives a config that survives a YAML and a JSON save/load exactly, or raises ConfigError naming the field


FIELDS = [
    f"{section}.{name}"
    for section, info in RunConfig.model_fields.items()
    for name in info.annotation.model_fields
]


#: strings the fields' own vocabularies use, and strings YAML reads as something else
WORDS = [
    "all", "auto", "cpu", "cuda", "cuda:1", "visible", "cosine", "constant", "bf16", "fp32", "timm", "hf",
    "open_clip", "pyav", "inductor", "default", "max-autotune", "mosic", "mosic + 0.1 correspondence",
    "2*static", "synthetic:num_videos=4", "vit-tiny", "lk", "null", "true", "1e-5", "0x10", "2001-12-14",
    "!!python/name:os.system", "[1, 2", "", " ", "-", "~", "&a [*a]", "&a {x: *a}", "!!binary aGk=", "!!set {a, b}",
    "{a: 1, a: 2}", "? [1]\n: 2",
]  # fmt: skip


TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3000),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0, 1),
    TEXT,
    st.sampled_from(WORDS),
)


VALUES = st.one_of(
    SCALARS,
    st.lists(st.one_of(st.integers(-2, 4096), st.floats(-0.5, 1.5), st.sampled_from(WORDS)), max_size=3),
    st.dictionaries(st.sampled_from(["a", "depth", "weights", "long_term_gap"]), SCALARS, max_size=2),
)


def check_round_trip(config: RunConfig, tmp_path) -> None:
    for suffix in (".yaml", ".json"):
        path = tmp_path / f"config{suffix}"
        config.save(path)
        loaded = RunConfig.from_file(path)
        assert loaded == config, suffix
        assert loaded.model_dump() == config.model_dump(), suffix


@FUZZ
@given(key=st.sampled_from(FIELDS), value=VALUES)
def test_config_field_values(key, value, tmp_path):
    section, name = key.split(".")
    try:
        config = RunConfig.from_dict({section: {name: value}})
    except ConfigError as exc:
        assert key in str(exc), str(exc)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            RunConfig().with_overrides({key: value})
        return
    assert config == RunConfig().with_overrides({key: value})
    check_round_trip(config, tmp_path)


@FUZZ
@given(key=st.sampled_from(FIELDS), text=st.one_of(TEXT, st.sampled_from(WORDS), st.text(string.printable, max_size=20)))
def test_config_command_line_overrides(key, text, tmp_path):
    """``section.key=TEXT`` (YAML-parsed): a config or a ConfigError, whatever the text."""
    try:
        config = RunConfig().with_overrides([f"{key}={text}"])
    except ConfigError as exc:
        assert key in str(exc) or "override" in str(exc), str(exc)
        return
    check_round_trip(config, tmp_path)


@FUZZ
@given(
    data=st.dictionaries(
        st.one_of(st.sampled_from(list(RunConfig.model_fields)), TEXT),
        st.one_of(st.dictionaries(st.one_of(st.sampled_from([f.split(".")[1] for f in FIELDS]), TEXT), VALUES, max_size=3), VALUES),
        max_size=3,
    )
)
def test_config_documents(data):
    """Whole random documents: a config or a ConfigError, nothing else."""
    try:
        RunConfig.from_dict(data)
    except ConfigError as exc:
        assert str(exc).startswith("invalid configuration:"), str(exc)


def test_fuzz_examples_are_reproducible():
    """derandomize=True: the examples do not depend on a seed or a database."""
    assert FUZZ.derandomize and FUZZ.deadline is None and FUZZ.database is None


# ---- bad values and overrides name the field


@pytest.mark.parametrize(
    "data,match",
    [
        ({"train": {"seed": -1}}, r"train\.seed: Input should be greater than or equal to 0 \(got -1\)"),
        ({"optim": {"betas": [0.9, 1.0]}}, r"optim\.betas: .*betas must be two numbers in \[0, 1\)"),
        ({"train": {"device": "gpu0"}}, r"train\.device: .*device must be 'auto' or a torch device .*got 'gpu0'"),
        ({"backbone": {"train_blocks": -1}}, r"backbone\.train_blocks: Input should be greater than or equal to 0 or Input should be 'all' \(got -1\)"),
        ({"objective": {"head_hidden_dims": [64, 0]}}, r"objective\.head_hidden_dims\.1: Input should be greater than or equal to 1"),
        ({"objective": {"temperature": math.inf}}, r"objective\.temperature: Input should be a finite number \(got inf\)"),
        ({"data": {"clip_seconds": math.nan}}, r"data\.clip_seconds: Input should be a finite number"),
        ({"data": {"crop_scale": [0.9, 0.2]}}, r"data\.crop_scale: .*0 < low <= high <= 1"),
        ({"objective": {"name": "mosic - static"}}, r"objective\.name: .*cannot read 'mosic - static'"),
        ({"objective": {"name": "1e400 mosic"}}, r"objective\.name: .*must be finite"),
        ({"tracker": {"grid_size": 0}}, r"tracker\.grid_size: Input should be greater than or equal to 1"),
        ({"data": {"num_frames": "many"}}, r"data\.num_frames: Input should be a valid integer"),
        ({"train": {"max_step": 3}}, r"train\.max_step: unknown key"),
        ([1, 2], r"a config must be a mapping of sections"),
    ],
)
def test_bad_config_values_name_the_field(data, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_dict(data)


def test_bad_overrides_are_config_errors():
    with pytest.raises(ConfigError, match="overrides must be a dict"):
        RunConfig().with_overrides("train.seed=1")
    with pytest.raises(ConfigError, match="override keys must be strings"):
        RunConfig().with_overrides({1: 2})
    with pytest.raises(ConfigError, match=r"override 3 must look like section.key=value"):
        RunConfig().with_overrides([3])
    with pytest.raises(ConfigError, match=r"the override 'train.seed=\[1' is not valid YAML"):
        RunConfig().with_overrides(["train.seed=[1"])
    with pytest.raises(TypeError, match="spec must be a file path or a preset name"):
        RunConfig.load(42)


# ---- Table 6 as config, presets


def test_every_table_6_ablation_is_a_typed_field():
    cfg = RunConfig()
    table6 = {
        "train.mask_ratio": (0.1, 0.4),  # 6a
        "train.ema": (True, False),  # 6b
        "tracker.grid_size": (16, 32),  # 6c
        "data.crop_scale": ((0.4, 1.0), (0.2, 1.0)),  # 6d
        "objective.num_prototypes": (100, 300),  # 6e
        "objective.loss_points": ("visible", "all"),  # 6f
        "data.clip_seconds": (3.2, 0.5),  # 6g
        "data.num_frames": (12, 8),  # 6h
        "train.ema_momentum": (0.99, 0.996),
        "objective.sinkhorn_epsilon": (0.05, 0.03),
        "objective.sinkhorn_iterations": (10, 3),
        "objective.temperature": (0.1, 0.2),
    }
    for key, (default, other) in table6.items():
        section, field = key.split(".")
        assert getattr(getattr(cfg, section), field) == default, key
        changed = cfg.with_overrides({key: other})
        assert getattr(getattr(changed, section), field) == other, key
    with pytest.raises(ConfigError, match="mask_ratio"):
        cfg.with_overrides({"train.mask_ratio": 1.5})
    with pytest.raises(ConfigError, match="loss_points"):
        cfg.with_overrides({"objective.loss_points": "some"})


def test_clip_seconds_sets_the_stride_unless_frame_stride_is_given():
    cfg = RunConfig()
    assert cfg.data.stride == 8  # 3.2 s / 12 frames at 30 fps
    assert cfg.with_overrides({"data.clip_seconds": 0.5}).data.stride == 1
    assert cfg.with_overrides({"data.clip_seconds": 1.6, "data.fps": 60}).data.stride == 8
    assert cfg.with_overrides({"data.frame_stride": 6}).data.stride == 6  # the authors' script


@pytest.mark.parametrize("name", list_presets())
def test_presets_load_and_name_registered_backbones(name):
    cfg = RunConfig.load(name)
    assert cfg.backbone.name in mosic.list_backbones()
    assert cfg.data.global_batch_size == 64 and cfg.data.stride == 8
    assert cfg.train.epochs == {"dino-s16": 100, "dino-s16-ablation": 50}.get(name, 8)
    assert (cfg.optim.backbone_lr, cfg.optim.head_lr, cfg.train.ema_momentum) == (1e-5, 1e-4, 0.99)


def test_presets_cover_the_papers_main_runs_and_unknown_names_say_so():
    assert {"dinov2-s14", "dinov2-b14", "dino-s16", "eva-clip-b14", "dinov2r-b14"} <= set(list_presets())
    with pytest.raises(FileNotFoundError, match="dinov2-s14"):
        RunConfig.load("dinov2-s15")


# ---- untrusted config files: safe YAML only


def test_config_yaml_with_python_tags_is_refused(tmp_path, marker):
    path = tmp_path / "evil.yaml"
    path.write_text(f"train:\n  seed: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match=r"(?s)evil\.yaml.*python/object/apply:os\.system.*safe_load.*refused"):
        RunConfig.load(path)
    with pytest.raises(ConfigError, match="python/object"):
        RunConfig.from_file(path)
    with pytest.raises(ConfigError, match=r"(?s)the override .*python/name.*refused"):
        RunConfig().with_overrides(["train.device=!!python/name:os.system"])
    (tmp_path / "broken.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml is not valid YAML"):
        RunConfig.load(tmp_path / "broken.yaml")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match=r"binary\.yaml: a config must be UTF-8"):
        RunConfig.load(tmp_path / "binary.yaml")
    with pytest.raises(ConfigError, match="python/object"):
        RunConfig.from_yaml(path.read_text(), "checkpoint config.yaml")
