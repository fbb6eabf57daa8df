"""Typed run configuration (pydantic v2): one :class:`RunConfig` fully describes a run.

Defaults are the paper's (section 7.3, Table 6); where the authors' code differed the
field's description says so. Configs load from YAML/JSON, reject unknown keys, take
``section.key=value`` overrides, and are saved next to every checkpoint.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

#: a positive int (list items)
PositiveInt = Annotated[int, Field(ge=1)]
#: largest seed + epoch torch generators accept with room to spare
_MAX_SEED = 2**63


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message says which and why."""


class _Section(BaseModel):
    # inf / nan are never meaningful here, and would not survive a save (JSON writes them as null)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("kwargs", check_fields=False)
    @classmethod
    def _check_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        problem = _not_plain(kwargs)
        if problem:
            raise ValueError(
                f"kwargs must hold plain data that a saved config can hold (str, int, finite float, bool, None, "
                f"lists and mappings of them, paths): {problem}"
            )
        return kwargs


def _not_plain(value: Any, where: str = "", _open: frozenset[int] = frozenset()) -> str | None:
    """Why ``value`` is not plain YAML/JSON data (None when it is). YAML anchors can build
    self-referencing lists and mappings (``&a [*a]``): those are reported, not recursed into."""
    if value is None or isinstance(value, (bool, int, str, os.PathLike)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where or 'a value'} is {value}"
    if isinstance(value, (list, tuple, dict)):
        if id(value) in _open or len(_open) > 50:
            return f"{where or 'a value'} is a self-referencing (or too deeply nested) structure"
        _open = _open | {id(value)}
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(value, dict) and not isinstance(key, str):
                return f"key {key!r} of {where or 'kwargs'} is not a string"
            inner = (f"{where}.{key}" if where else key) if isinstance(value, dict) else f"{where}[{key}]"
            problem = _not_plain(item, inner, _open)
            if problem:
                return problem
        return None
    return f"{where or 'a value'} is a {type(value).__name__}"


class BackboneConfig(_Section):
    name: str = Field("dinov2-s14", description="registered backbone name, see `mosic list backbones`")
    pretrained: bool | str = Field(
        True,
        description="True: the provider's hub download; False: random init; str: a local weights file "
        "(timm, HF, open_clip, torch.hub or MoSiC/NeCo/TimeTuning keys, detected)",
    )
    source: Literal["timm", "hf", "open_clip"] | None = Field(
        None, description="provider of a registered backbone (None: the card's default, timm)"
    )
    train_blocks: Annotated[int, Field(ge=0)] | Literal["all"] = Field(
        2, description="train the last N blocks (+ final norm) or 'all'"
    )
    train_final_norm: bool = Field(
        True,
        description="with train_blocks=N, also train the final norm (False: the authors' name rule, "
        "which selects 'blocks.10'/'blocks.11' and so leaves the final norm frozen)",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for the backbone factory")


class TrackerConfig(_Section):
    name: str = Field(
        "cotracker3",
        description="registered tracker (paper: cotracker3, offline); lk needs no weights; oracle is the "
        "ground truth of synthetic clips; see `mosic list trackers`",
    )
    grid_size: int = Field(16, ge=1, description="G of the G x G query grid on frame 0 (paper Table 6c: 16)")
    cache: str | None = Field(
        None,
        description="a track cache from `mosic track` (tracks computed once per video); None tracks inside every step",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="tracker arguments, e.g. weights: /path/scaled_offline.pth")


class ObjectiveConfig(_Section):
    name: str = Field(
        "mosic",
        description="registered objective (`mosic list objectives`) or a weighted sum of them, "
        "e.g. 'mosic + 0.1 correspondence'",
    )
    num_prototypes: int = Field(100, ge=2, description="K prototypes (paper Table 6e: 100; 50-300 tried)")
    projection_dim: int = Field(256, ge=1)
    head_hidden_dims: list[PositiveInt] = Field(
        default_factory=lambda: [2048, 2048],
        description="projection MLP hidden widths (paper: 2048, 2048; authors' code: 1024, 1024, 512)",
    )
    temperature: float = Field(0.1, gt=0, description="softmax temperature of the student scores (paper: 0.1)")
    sinkhorn_epsilon: float = Field(0.05, gt=0, description="Sinkhorn-Knopp entropic regularisation (paper: 0.05)")
    sinkhorn_iterations: int = Field(10, ge=1, description="Sinkhorn-Knopp iterations (paper: 10)")
    loss_points: Literal["visible", "all"] = Field(
        "visible", description="paper Table 6f: the loss on visible (point, frame) entries only, or on all"
    )
    mean_over_all: bool = Field(False, description="authors' code: visibility-weighted sum / all entries")
    teacher_read: Literal["bilinear", "nearest"] = Field(
        "bilinear",
        description="how the teacher's features are read at track points: bilinear between patch centres "
        "(the paper, section 3) or nearest, the patch of the rounded pixel (the authors' train.sh: "
        "--teacher_feature_upsampling nearest)",
    )
    head_init: Literal["trunc_normal", "pytorch"] = Field(
        "trunc_normal",
        description="projection head weights: trunc_normal(std=0.02) with zero biases, or pytorch "
        "(nn.Linear's default init, the authors' code); MoSiC objectives",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="further arguments of the objective; for a sum, keyed by term: "
        "objective.kwargs.correspondence.long_term_gap=3",
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        parse_objective_expression(name)
        return name


class DataConfig(_Section):
    videos: str | list[str] | None = Field(
        None,
        description="folder of videos or frame folders, video files, or 'synthetic:num_videos=64,size=64'",
    )
    num_frames: int = Field(12, ge=2, description="frames per clip (paper Table 6h: 12)")
    clip_seconds: float = Field(
        3.2,
        gt=0,
        description="clip length (paper Table 6g: 3.2 s), i.e. one frame every clip_seconds / num_frames "
        "seconds at `fps`; ignored when frame_stride is set",
    )
    fps: float = Field(30.0, gt=0, description="frame rate of the training videos (YouTube-VOS all_frames: 30)")
    frame_stride: int | None = Field(
        None,
        ge=1,
        description="source frames between clip frames; None derives it from clip_seconds "
        "(paper: 3.2 s / 12 frames at 30 fps = 8; the authors' script: 6, ~2.2 s)",
    )
    size: int = Field(224, ge=8, description="training view size in pixels (square)")
    crop_scale: tuple[float, float] = Field(
        (0.4, 1.0), description="RandomResizedCrop area interval (paper Table 6d: [0.4, 1]; (1, 1) = no crop)"
    )
    flip_probability: float = Field(0.0, ge=0, le=1, description="horizontal flip (paper: none)")
    global_batch_size: int = Field(
        64, ge=1, description="clips per optimisation step over all processes (paper and authors: 64)"
    )
    num_workers: int = Field(4, ge=0)
    backend: Literal["auto", "pyav", "torchcodec", "decord"] = Field(
        "auto",
        description="video decoder: auto (= pyav), pyav, torchcodec (needs FFmpeg's shared libraries), or decord "
        "(returns wrong frames on some files: never picked by auto; docs/data.md)",
    )
    decode_timeout: float | None = Field(
        60.0,
        gt=0,
        description="seconds one video read may take; past it the decoder process is killed and the video "
        "skipped like a corrupt one (None: decode in-process, no protection against hung decoders)",
    )
    prepared: str | None = Field(
        None,
        description="a folder from `mosic prepare` (the frames clips read, decoded once and resized): training "
        "reads them instead of decoding videos, with clip starts on its lattice (every start_step frames, as a "
        "track cache); None decodes every clip",
    )
    skip_bad_videos: bool = Field(
        True,
        description="a video that cannot be read is skipped (one warning, counted, reported at the end) and "
        "another takes its place in the batch; False: the first bad video stops the run",
    )

    @property
    def stride(self) -> int:
        """The frame stride in use: ``frame_stride``, or ``round(clip_seconds * fps / num_frames)``."""
        if self.frame_stride is not None:
            return self.frame_stride
        return max(1, round(self.clip_seconds * self.fps / self.num_frames))

    @field_validator("crop_scale")
    @classmethod
    def _check_scale(cls, crop_scale: tuple[float, float]) -> tuple[float, float]:
        lo, hi = crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must be (low, high) with 0 < low <= high <= 1, got {crop_scale}")
        return crop_scale


class OptimConfig(_Section):
    backbone_lr: float = Field(1e-5, ge=0)
    head_lr: float = Field(1e-4, ge=0, description="projection head and prototypes")
    weight_decay: float = Field(0.01, ge=0, description="0 for biases and 1-D parameters")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas, each in [0, 1)")
    grad_clip: float | None = Field(None, gt=0, description="max gradient norm; None = off (paper)")
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine floor as a fraction of the peak lr")

    @field_validator("betas")
    @classmethod
    def _check_betas(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), e.g. (0.9, 0.999), got {betas}")
        return betas


class TrainConfig(_Section):
    epochs: int = Field(8, ge=1, description="passes over the videos (paper: 8 for DINOv2)")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (overrides epochs)")
    ema: bool = Field(True, description="EMA teacher (paper Table 6b); False: teacher = student")
    ema_momentum: float = Field(0.99, ge=0, le=1, description="EMA momentum (paper: 0.99, constant)")
    ema_schedule: Literal["constant", "cosine"] = Field("constant", description="cosine: momentum -> 1")
    mask_ratio: float = Field(
        0.1, ge=0, lt=1, description="student token masking (paper Table 6a: 10%; authors' script: 0)"
    )
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1 ...")
    seed: int = Field(0, ge=0, lt=_MAX_SEED, description="non-negative random seed")
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(500, ge=1, description="steps between checkpoints (one is always written at the end)")
    keep_checkpoints: int = Field(2, ge=1)
    out_dir: str | None = Field(None, description="run folder: checkpoints, metrics.jsonl, config.yaml")
    progress: bool = True
    accumulation_steps: int = Field(
        1,
        ge=1,
        description="split each process's share of the global batch into this many micro-batches for the "
        "student's backward pass (exact: the objective and its Sinkhorn still see the whole global batch)",
    )
    shard_optimizer: bool = Field(
        False, description="ZeRO-1: each process keeps 1/world of the AdamW moments (ZeroRedundancyOptimizer)"
    )
    max_nonfinite_steps: int = Field(
        5,
        ge=1,
        description="a step whose loss or gradient is not finite is skipped with a warning; "
        "this many in a row stop the run (the last checkpoint stays as it was)",
    )
    compile: bool = Field(False, description="torch.compile the student's and teacher's backbones")
    compile_backend: str = Field("inductor", description="torch.compile backend (inductor; eager for debugging)")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] | None = Field(
        None, description="torch.compile mode (None: the backend's default)"
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, device: str) -> str:
        if device == "auto":
            return device
        import torch

        try:
            torch.device(device)
        except (RuntimeError, ValueError, TypeError):
            raise ValueError(f"device must be 'auto' or a torch device such as 'cpu', 'cuda', 'cuda:1', got {device!r}") from None
        return device


class RunConfig(_Section):
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    tracker: TrackerConfig = Field(default_factory=TrackerConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    # ---- construction -------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a mapping of sections (backbone, tracker, ...), got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_format_errors(exc)) from None

    @classmethod
    def from_file(cls, path: str | Path) -> "RunConfig":
        """Read YAML (``yaml.safe_load``: no arbitrary objects) or, for ``.json`` files, JSON.

        A file is untrusted input: YAML tags that would build Python objects
        (``!!python/object/apply:os.system``...) are refused with a :class:`ConfigError`
        naming the file, as are unreadable files and syntax errors.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: a config must be UTF-8 YAML or JSON text ({exc})") from None
        if path.suffix.lower() == ".json":  # JSON proper: PyYAML (YAML 1.1) misreads 1e-05 and some characters
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path} is not valid JSON: {exc}") from None
            if not isinstance(data, dict):
                raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
            return cls.from_dict(data)
        return cls.from_yaml(text, str(path))

    @classmethod
    def from_yaml(cls, text: str, source: str = "<string>") -> "RunConfig":
        """Parse YAML/JSON text with ``yaml.safe_load``; ``source`` names it in errors (a
        checkpoint's ``config.yaml``...). Python-object tags and syntax errors raise :class:`ConfigError`."""
        if not isinstance(text, str):
            raise TypeError(f"RunConfig.from_yaml: text must be a str, got {type(text).__name__}")
        data = _safe_yaml(text, source) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a config must be a mapping of sections, got {type(data).__name__}")
        return cls.from_dict(data)

    @classmethod
    def load(cls, spec: str | Path) -> "RunConfig":
        """A YAML/JSON file, or the name of a packaged preset (``mosic list presets``)."""
        if not isinstance(spec, (str, Path)):
            raise TypeError(f"RunConfig.load: spec must be a file path or a preset name (str), got {type(spec).__name__}")
        path = Path(spec)
        if path.is_file():
            return cls.from_file(path)
        presets = list_presets()
        if str(spec) in presets:
            return cls.from_file(PRESETS_DIR / f"{spec}.yaml")
        close = difflib.get_close_matches(str(spec), presets, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise FileNotFoundError(
            f"{spec!r} is neither a config file nor a preset; {hint}presets: {', '.join(presets)}"
        )

    def with_overrides(self, overrides: dict[str, Any] | list[str]) -> "RunConfig":
        """A copy with ``{"train.max_steps": 10}``, ``["train.max_steps=10"]`` or
        unambiguous bare field names (``{"max_steps": 10}``) applied. Entries of the
        ``kwargs`` dicts are set with ``"tracker.kwargs.weights=/path"``."""
        if isinstance(overrides, (list, tuple)):
            overrides = dict(_parse_assignment(item) for item in overrides)
        if not isinstance(overrides, dict):
            raise ConfigError(
                "overrides must be a dict {'section.key': value} or a list of 'section.key=value' strings, "
                f"got {type(overrides).__name__}"
            )
        data = self.model_dump()
        for key, value in overrides.items():
            if not isinstance(key, str):
                raise ConfigError(f"override keys must be strings like 'train.max_steps', got {key!r}")
            head, _, entry = key.partition(".kwargs.")
            if entry:  # one entry of a section's free-form kwargs
                section, field = self.resolve_key(f"{head}.kwargs")
                data[section][field] = {**(data[section][field] or {}), entry: value}
                continue
            section, field = self.resolve_key(key)
            data[section][field] = value
        return RunConfig.from_dict(data)

    @classmethod
    def resolve_key(cls, key: str) -> tuple[str, str]:
        """``"train.max_steps"`` or ``"max_steps"`` -> ("train", "max_steps")."""
        sections = {name: info.annotation.model_fields for name, info in cls.model_fields.items()}
        if "." in key:
            section, field = key.split(".", 1)
            if section not in sections:
                raise ConfigError(_unknown(key, section, list(sections), "section"))
            if field not in sections[section]:
                raise ConfigError(_unknown(key, field, list(sections[section]), f"key of '{section}'"))
            return section, field
        owners = [s for s, fields in sections.items() if key in fields]
        if len(owners) == 1:
            return owners[0], key
        if len(owners) > 1:
            raise ConfigError(f"{key!r} is ambiguous: use one of {', '.join(f'{o}.{key}' for o in owners)}")
        every = [f"{s}.{f}" for s, fields in sections.items() for f in fields]
        raise ConfigError(_unknown(key, key, every + [f for fields in sections.values() for f in fields], "key"))

    # ---- serialisation ---------------------------------------------------------------
    def to_yaml(self) -> str:
        return yaml.safe_dump(json.loads(self.model_dump_json()), sort_keys=False)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        text = self.model_dump_json(indent=2) if path.suffix == ".json" else self.to_yaml()
        path.write_text(text)


PRESETS_DIR = Path(__file__).parent / "configs"


def list_presets() -> list[str]:
    """Names of the packaged presets: the paper's main runs (``mosic/configs/*.yaml``)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_summary(name: str) -> str:
    """The first comment line of a preset (what run it reproduces)."""
    for line in (PRESETS_DIR / f"{name}.yaml").read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def _parse_assignment(item: str) -> tuple[str, Any]:
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    return key.strip(), _safe_yaml(raw, f"the override {item!r}") if raw.strip() else None


def _safe_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load(text)``; errors (a tag that would build a Python object, bad syntax)
    become a :class:`ConfigError` that says where."""
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        raise ConfigError(
            f"{where}: {exc.problem or exc}{_mark(exc)}. Configs are read with yaml.safe_load: tags that "
            "would build Python objects or run code (!!python/object, !!python/object/apply, ...) are refused; "
            "write plain values (numbers, strings, lists, mappings)"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML/JSON: {exc}") from None


def _mark(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


def _unknown(full: str, name: str, choices: list[str], what: str) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; valid: {', '.join(sorted(set(choices)))}"
    return f"unknown config {what} {name!r} in {full!r}{hint}"


_UNION_TAGS = {"int", "str", "bool", "float", "none"}


def _field_path(loc: tuple) -> str:
    """``("backbone", "train_blocks", "constrained-int")`` -> ``"backbone.train_blocks"``: the
    config path without pydantic's union-member tags."""
    parts = [
        str(p) for p in loc if not (isinstance(p, str) and (p in _UNION_TAGS or any(c in p for c in "[-(")))
    ]
    return ".".join(parts)


def _format_errors(exc: ValidationError) -> str:
    problems: dict[str, list[str]] = {}
    inputs: dict[str, Any] = {}
    for err in exc.errors():
        loc = _field_path(err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; `mosic fit --help` lists the sections)"
        else:
            message = err["msg"]
            inputs.setdefault(loc, err.get("input"))
        if message not in problems.setdefault(loc, []):
            problems[loc].append(message)
    lines = ["invalid configuration:"]
    for loc, messages in problems.items():
        line = f"  {loc}: {' or '.join(messages)}"
        if loc in inputs:
            got = repr(inputs[loc])
            line += f" (got {got if len(got) <= 200 else got[:200] + '...'})"
        lines.append(line)
    return "\n".join(lines)


def parse_key_values(items: list[str], what: str) -> dict:
    """``["k=v", ...]`` -> ``{k: YAML value of v}`` (command-line ``--set``-style options)."""
    import yaml

    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"{what} must look like key=value, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"{what} {item!r}: the value is not valid YAML ({exc.problem or exc})") from None
    return out


# ---- objective.name: one registered name or a weighted sum of them ------------------------
_TERM = re.compile(r"^\s*(?:(?P<weight>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*?\s*)?(?P<name>[A-Za-z_][\w\-.:]*)\s*$")


def parse_objective_expression(expression: str) -> list[tuple[float, str]]:
    """``"mosic + 0.1 correspondence"`` -> ``[(1.0, "mosic"), (0.1, "correspondence")]``.

    Terms are separated by ``+``; each is ``[weight][*]name`` with a non-negative
    weight (default 1). Names may contain ``-`` (``mosic-propagated``), so there is no
    subtraction.
    """
    if not isinstance(expression, str):
        raise TypeError(
            f"objective name must be a string such as 'mosic' or 'mosic + 0.1 correspondence', "
            f"got {type(expression).__name__}"
        )
    terms = []
    for part in expression.split("+"):
        match = _TERM.match(part)
        if match is None:
            raise ValueError(
                f"cannot read {part.strip()!r} in the objective {expression!r}: write terms as "
                "'name' or 'weight name' (or 'weight*name') joined by '+', e.g. 'mosic + 0.1 correspondence'"
            )
        weight = float(match["weight"]) if match["weight"] else 1.0
        if not math.isfinite(weight):
            raise ValueError(f"the weight of {match['name']!r} in the objective {expression!r} must be finite, got {weight}")
        terms.append((weight, match["name"]))
    names = [name for _, name in terms]
    if len(set(names)) != len(names):
        raise ValueError(f"the objective {expression!r} names a term twice; merge the weights")
    return terms
