"""Weight key formats of ViT backbones: detection and conversion through timm's keys.

timm's key format is the canonical one: every file is converted to timm keys for the
architecture (:class:`~mosic.backbones.card.ViTSpec`) being loaded, then to the key
format of the module that receives it (``Backbone.weight_format``).

Formats (see :data:`FORMATS`):

``timm``
    timm ``VisionTransformer`` / ``Eva`` keys (``patch_embed.proj.weight``,
    ``blocks.N.attn.qkv.weight``...). Official DINO (v1) torch.hub files have exactly
    these keys and are detected as timm.
``torchhub``
    official facebookresearch/dinov2 hub files: timm-like keys plus ``mask_token``,
    ``register_tokens`` (with registers) and ``blocks.N.mlp.w12``/``w3`` (ViT-g SwiGLU);
    DINOv2 training checkpoints' chunked ``blocks.C.N.`` are flattened.
``hf``
    Hugging Face ``Dinov2Model`` / ``Dinov2WithRegistersModel`` (``embeddings.*``,
    ``encoder.layer.N.*``, ``layernorm.*``), with the legacy names of the hub checkpoints
    (``attention.attention.query``, ``attention.output.dense``, ``mlp.weights_in``) or
    transformers 5's (``attention.q_proj``, ``attention.o_proj``, ``mlp.gate_proj``),
    optionally under ``dinov2.`` (``Dinov2ForImageClassification``).
``open_clip``
    a full open_clip CLIP state dict whose image tower is a timm trunk (``visual.trunk.*``);
    the text tower and the CLIP projection are ignored.
``prefixed``
    a backbone in one of the formats above under another prefix, next to non-backbone
    parts: the released MoSiC / NeCo / TimeTuning checkpoints
    (``feature_extractor.model.*`` beside ``mlp_head.*``, ``prototypes``), DINOv2 training
    checkpoints (``teacher.backbone.*``).

Conventions: timm's DINOv2-with-registers models use ``no_embed_class``: their
``pos_embed`` (1, N, D) covers the patches only and ``cls_token`` already includes the
CLS position embedding, while hub/HF files keep a (1, 1 + N, D) ``pos_embed`` and add it
to the CLS token. timm's fused ``attn.qkv`` stacks rows [q; k; v]; DINOv2-g's packed
SwiGLU ``mlp.fc1`` (hub ``w12``) stacks [gate; up] with hidden = silu(gate) * up.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from .card import ViTSpec
from .weights import load_state_dict_strict, read_state_dict

logger = logging.getLogger("mosic")

FORMATS = {
    "timm": "timm VisionTransformer/Eva keys: patch_embed.proj.weight, blocks.N.* (also official DINO v1 torch.hub files)",
    "torchhub": "facebookresearch/dinov2 torch.hub: timm-like keys with mask_token, register_tokens, mlp.w12/w3",
    "hf": "Hugging Face Dinov2Model / Dinov2WithRegistersModel: embeddings.*, encoder.layer.N.*, layernorm.*",
    "open_clip": "open_clip CLIP with a timm image trunk: visual.trunk.*, text tower ignored",
    "prefixed": "one of the above under a prefix, e.g. MoSiC/NeCo/TimeTuning feature_extractor.model.*",
}
#: formats a backbone's own module can be in (targets of :func:`from_timm`)
TARGET_FORMATS = ("timm", "torchhub", "hf", "open_clip")

_TIMM_PATCH = "patch_embed.proj.weight"
_HF_PATCH = "embeddings.patch_embeddings.projection.weight"
_OPEN_CLIP_TRUNK = "visual.trunk."
_OPEN_CLIP_TEXT = ("transformer.", "token_embedding.", "positional_embedding", "ln_final.", "text_projection",
                   "logit_scale", "logit_bias", "text.")
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")

# HF layer modules <-> timm block modules (both HF name sets); q/k/v and gate/up are fused in timm
_HF_EMBEDDINGS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.register_tokens": "reg_token",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_LAYER = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "layer_scale1": "ls1",
    "layer_scale2": "ls2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.fc1",
    "mlp.weights_out": "mlp.fc2",
    "mlp.down_proj": "mlp.fc2",
}
_HF_FUSED = {  # HF module -> (timm module, part, parts in timm's row order)
    "attention.attention.query": ("attn.qkv", "q", ("q", "k", "v")),
    "attention.attention.key": ("attn.qkv", "k", ("q", "k", "v")),
    "attention.attention.value": ("attn.qkv", "v", ("q", "k", "v")),
    "attention.q_proj": ("attn.qkv", "q", ("q", "k", "v")),
    "attention.k_proj": ("attn.qkv", "k", ("q", "k", "v")),
    "attention.v_proj": ("attn.qkv", "v", ("q", "k", "v")),
    "mlp.gate_proj": ("mlp.fc1", "gate", ("gate", "up")),
    "mlp.up_proj": ("mlp.fc1", "up", ("gate", "up")),
}
_HF_LAYER_KEY = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)")
_TIMM_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias|gamma)")


def detect_format(state: Mapping[str, torch.Tensor], prefix: str | None = None) -> tuple[str, str]:
    """The key format of a state dict and the prefix its backbone keys sit under.

    The backbone is found by its patch-embedding key (``...patch_embed.proj.weight`` or
    ``...embeddings.patch_embeddings.projection.weight``). Official DINO v1 hub files have
    timm's keys exactly and are reported as ``"timm"``.

    Args:
        state: name -> tensor.
        prefix: the backbone's prefix when the file holds several backbones (student
            and teacher); None finds it.
    Returns:
        (format, prefix), format one of :data:`FORMATS`; prefix ends with ``.`` or is "".
    Raises:
        ValueError: no backbone found, or several backbone prefixes and no ``prefix``.
    """
    found: dict[str, bool] = {}  # prefix -> is HF
    for key in state:
        for suffix, is_hf in ((_HF_PATCH, True), (_TIMM_PATCH, False)):
            if key.endswith(suffix) and (len(key) == len(suffix) or key[-len(suffix) - 1] == "."):
                found.setdefault(key[: -len(suffix)], is_hf)
                break
    if prefix is not None:
        if prefix not in found:
            raise ValueError(
                f"no backbone under prefix {prefix!r} (its patch embedding {prefix}{_TIMM_PATCH} or "
                f"{prefix}{_HF_PATCH} is not in the file); backbones found under: {sorted(found) or 'none'}"
            )
        found = {prefix: found[prefix]}
    if not found:
        shown = ", ".join(list(state)[:8]) + (", ..." if len(state) > 8 else "")
        understood = "\n".join(f"  {name}: {text}" for name, text in FORMATS.items())
        raise ValueError(
            f"unrecognised weights: no ViT patch embedding ({_TIMM_PATCH} or {_HF_PATCH}) among the "
            f"{len(state)} keys ({shown}). Formats understood:\n{understood}"
        )
    if len(found) > 1:
        raise ValueError(
            f"the file holds several backbones, under the prefixes {sorted(found)} (e.g. student and "
            "teacher); choose one with prefix=..., e.g. load_backbone_weights(backbone, path, "
            f"prefix={sorted(found)[-1]!r})"
        )
    (found_prefix, is_hf), = found.items()
    if is_hf:
        return ("hf" if found_prefix in ("", "dinov2.") else "prefixed"), found_prefix
    if found_prefix == _OPEN_CLIP_TRUNK:
        return "open_clip", found_prefix
    if found_prefix:
        return "prefixed", found_prefix
    return ("torchhub" if _looks_torchhub(state) else "timm"), ""


def to_timm(
    state: Mapping[str, torch.Tensor], spec: ViTSpec, fmt: str, prefix: str = ""
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Convert a state dict in format ``fmt`` to timm's keys for the architecture ``spec``.

    Keys outside ``prefix`` and known non-backbone keys inside it (classifier or CLIP
    projection heads, the mask token) are dropped and described in ``ignored``; keys that
    match no rule are kept unchanged, so that a strict load reports them.

    Returns:
        (timm state, ignored), ignored like ``["classifier head `head.*` (2 tensors)"]``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; formats: {list(FORMATS)}")
    inner, outside = {}, defaultdict(list)
    for key, value in state.items():
        if key.startswith(prefix):
            inner[key[len(prefix) :]] = value
        else:
            outside[_outside_group(key, prefix, fmt)].append(key)
    ignored = [f"{name} ({_tensors(len(keys))})" for name, keys in outside.items()]

    inner_fmt = fmt
    if fmt == "open_clip":
        inner_fmt = "timm"
    elif fmt == "prefixed":
        inner_fmt = "hf" if _HF_PATCH in inner else ("torchhub" if _looks_torchhub(inner) else "timm")
    if spec.kind == "eva" and inner_fmt in ("hf", "torchhub"):
        raise ValueError(
            f"EVA-02 weights come in timm, open_clip or prefixed timm keys; this file is in {inner_fmt!r} "
            "format, which holds DINOv2 models (check the backbone name)"
        )

    dropped: dict[str, list[str]] = defaultdict(list)
    if inner_fmt == "hf":
        out = _hf_to_timm(inner, prefix, dropped)
    else:
        out = {}
        for key, value in inner.items():
            label = _timm_non_backbone(key, fmt)
            if label is not None:
                dropped[f"{label} `{prefix}{_group_of(key)}`"].append(key)
                continue
            if inner_fmt == "torchhub":
                key = _CHUNKED_BLOCK.sub(r"blocks.\1.", key)
                key = key.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
                key = "reg_token" if key == "register_tokens" else key
            out[key] = value
    if inner_fmt in ("hf", "torchhub") and spec.num_registers > 0 and "pos_embed" in out and "cls_token" in out:
        pos = out["pos_embed"]
        out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
    ignored += [f"{name} ({_tensors(len(keys))})" for name, keys in dropped.items()]
    return out, ignored


def from_timm(
    state: Mapping[str, torch.Tensor],
    spec: ViTSpec,
    fmt: str,
    reference_keys: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Convert a timm state dict of architecture ``spec`` to format ``fmt``.

    Args:
        fmt: one of :data:`TARGET_FORMATS`.
        reference_keys: the target module's state-dict keys. For ``"hf"`` they choose
            between legacy and transformers 5 names, the ``dinov2.`` prefix and whether a
            mask token is written (default: the installed transformers' ``Dinov2Model``);
            for ``"open_clip"`` they give the trunk's prefix (default ``visual.trunk.``).
    Returns:
        the state dict in ``fmt``. A mask token (zeros) is created for hub/HF, and with
        registers the CLS position is put back in front of ``pos_embed`` (zeros).
    """
    if fmt not in TARGET_FORMATS:
        raise ValueError(f"cannot write weight format {fmt!r}; formats: {list(TARGET_FORMATS)}")
    state = dict(state)
    if fmt == "timm":
        return state
    if fmt == "open_clip":
        trunk = _OPEN_CLIP_TRUNK
        if reference_keys is not None:
            trunk = next((k[: -len(_TIMM_PATCH)] for k in reference_keys if k.endswith(_TIMM_PATCH)), trunk)
        return {trunk + k: v for k, v in state.items()}
    if spec.kind == "eva":
        raise ValueError(f"EVA-02 has no {fmt!r} format: EVA weights are written in timm or open_clip keys")
    if spec.num_registers > 0 and "pos_embed" in state:
        pos = state["pos_embed"]
        state["pos_embed"] = torch.cat([pos.new_zeros(pos.shape[0], 1, pos.shape[2]), pos], dim=1)
    if fmt == "torchhub":
        out = {}
        for key, value in state.items():
            if key == "reg_token":
                key = "register_tokens"
            elif spec.mlp == "swiglu":
                key = key.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")
            out[key] = value
        out["mask_token"] = _zeros_like_state(state, 1, spec.embed_dim)
        return out
    return _timm_to_hf(state, spec, reference_keys)


@dataclass
class LoadReport:
    """What :func:`load_backbone_weights` did."""

    source: str
    format: str
    prefix: str
    num_loaded: int = 0
    ignored: list[str] = field(default_factory=list)
    #: with ``strict=False``: the module's keys the file did not fill, the file's keys
    #: the module has no place for, and ``"key: file shape vs model shape"``
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)


def load_backbone_weights(
    backbone: nn.Module,
    path_or_state: str | Path | Mapping[str, torch.Tensor],
    strict: bool = True,
    prefix: str | None = None,
) -> LoadReport:
    """Load a weights file in any detected format into ``backbone.weights_module()``.

    The file is read safely (:func:`~mosic.backbones.weights.read_state_dict`), its format
    detected, converted to timm keys for ``backbone.spec`` and then to
    ``backbone.weight_format``. Non-backbone parts are dropped and logged (logger
    ``mosic``, INFO).

    Args:
        strict: True raises on any missing, unexpected or mis-shaped key; False loads what
            matches and warns (``warnings.warn``) about the rest.
        prefix: the backbone's prefix in a file holding several (student/teacher).
    """
    spec = getattr(backbone, "spec", None)
    if spec is None:
        raise ValueError(f"{type(backbone).__name__} has no .spec; cannot convert weights for it")
    if prefix is not None and not isinstance(prefix, str):
        raise TypeError(f"load_backbone_weights: prefix must be None or a str such as 'teacher.backbone.', got {prefix!r}")
    if isinstance(path_or_state, Mapping):
        state, source = dict(path_or_state), "the given state dict"
        wrong = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)][:5]
        if wrong:
            raise ValueError(f"load_backbone_weights: a state dict must map str names to tensors; not so for {wrong}")
    else:
        state, source = read_state_dict(path_or_state), str(path_or_state)
    fmt, found_prefix = detect_format(state, prefix)
    timm_state, ignored = to_timm(state, spec, fmt, found_prefix)
    module = backbone.weights_module()
    own = module.state_dict()
    target = backbone.weight_format or "timm"
    converted = from_timm(timm_state, spec, target, reference_keys=list(own))
    where = f"{fmt!r} format" + (f" under the prefix {found_prefix!r}" if found_prefix else "")
    report = LoadReport(source=source, format=fmt, prefix=found_prefix, ignored=ignored)
    if ignored:
        logger.info("%s: read as %s; ignored non-backbone parts: %s", source, where, "; ".join(ignored))
    if strict:
        load_state_dict_strict(
            module,
            converted,
            source,
            hint=f"The file was read as {where} and converted to {target!r} keys for {_describe(spec)}; "
            "check that this architecture matches the checkpoint (or pass prefix=... for another backbone in the file).",
        )
        report.num_loaded = len(converted)
        return report
    report.missing = sorted(set(own) - set(converted))
    report.unexpected = sorted(set(converted) - set(own))
    report.mismatched = sorted(
        f"{k}: file {tuple(converted[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(converted)
        if own[k].shape != converted[k].shape
    )
    loadable = {k: v for k, v in converted.items() if k in own and own[k].shape == v.shape}
    module.load_state_dict(loadable, strict=False)
    report.num_loaded = len(loadable)
    if report.missing or report.unexpected or report.mismatched:
        parts = [f"loaded {len(loadable)} of {len(own)} tensors from {source} ({where}) with strict=False"]
        for title, items in (("missing", report.missing), ("unexpected", report.unexpected),
                             ("shape mismatch", report.mismatched)):
            if items:
                parts.append(f"{title} ({len(items)}): " + ", ".join(items[:10]) + (", ..." if len(items) > 10 else ""))
        warnings.warn("; ".join(parts), stacklevel=2)
    return report


def _looks_torchhub(state: Iterable[str]) -> bool:
    return any(
        k in ("mask_token", "register_tokens") or ".mlp.w12." in k or _CHUNKED_BLOCK.match(k) for k in state
    )


def _tensors(n: int) -> str:
    return f"{n} tensor{'s' if n != 1 else ''}"


def _group_of(key: str, depth: int = 1) -> str:
    parts = key.split(".")
    return key if len(parts) <= depth else ".".join(parts[:depth]) + ".*"


def _outside_group(key: str, prefix: str, fmt: str) -> str:
    """A label for a key outside the backbone's prefix."""
    if fmt == "open_clip":
        if key.startswith(_OPEN_CLIP_TEXT):
            return "open_clip text tower"
        if key.startswith("visual."):
            return f"CLIP image projection `{_group_of(key, 2)}`"
    if _group_of(key) in ("classifier.*", "head.*"):
        return f"classifier head `{_group_of(key)}`"
    shared = 0
    for mine, theirs in zip(key.split("."), prefix.split(".")):
        if mine != theirs:
            break
        shared += 1
    return f"`{_group_of(key, shared + 1)}`"


def _timm_non_backbone(key: str, fmt: str) -> str | None:
    """The label of a known non-backbone key of a timm/hub backbone, else None."""
    if key.startswith("head."):
        return "CLIP image projection" if fmt == "open_clip" else "classifier head"
    if key.startswith("attn_pool."):
        return "attention-pool head"
    if key == "mask_token":
        return "mask token"
    return None


def _hf_to_timm(inner: dict[str, torch.Tensor], prefix: str, dropped: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    order: dict[str, tuple[str, ...]] = {}
    for key, value in inner.items():
        if key == "embeddings.mask_token":
            dropped[f"mask token `{prefix}{key}`"].append(key)
            continue
        if key in _HF_EMBEDDINGS:
            out[_HF_EMBEDDINGS[key]] = value
            continue
        match = _HF_LAYER_KEY.fullmatch(key)
        if match is None:
            out[key] = value
            continue
        index, module, leaf = match.groups()
        leaf = "gamma" if leaf == "lambda1" else leaf
        if module in _HF_FUSED:
            timm_module, part, parts = _HF_FUSED[module]
            timm_key = f"blocks.{index}.{timm_module}.{leaf}"
            fused[timm_key][part] = value
            order[timm_key] = parts
        elif module in _HF_LAYER:
            out[f"blocks.{index}.{_HF_LAYER[module]}.{leaf}"] = value
        else:
            out[key] = value
    for timm_key, parts in fused.items():
        missing = [p for p in order[timm_key] if p not in parts]
        if missing:
            raise ValueError(f"incomplete Hugging Face weights: {timm_key} needs {order[timm_key]}, {missing} absent")
        out[timm_key] = torch.cat([parts[p] for p in order[timm_key]], dim=0)
    return out


def _timm_to_hf(state: dict[str, torch.Tensor], spec: ViTSpec, reference_keys: Iterable[str] | None) -> dict[str, torch.Tensor]:
    reference = list(reference_keys) if reference_keys is not None else _installed_hf_keys()
    prefix = next((k[: -len(_HF_PATCH)] for k in reference if k.endswith(_HF_PATCH)), "")
    legacy = any(".attention.attention.query." in k for k in reference)
    names = {
        "attn.proj": "attention.output.dense" if legacy else "attention.o_proj",
        "mlp.fc2": ("mlp.weights_out" if legacy else "mlp.down_proj") if spec.mlp == "swiglu" else "mlp.fc2",
    }
    qkv = ("attention.attention.query", "attention.attention.key", "attention.attention.value") if legacy else (
        "attention.q_proj", "attention.k_proj", "attention.v_proj")
    to_hf_embeddings = {v: k for k, v in _HF_EMBEDDINGS.items()}
    to_hf_layer = {"norm1": "norm1", "norm2": "norm2", "ls1": "layer_scale1", "ls2": "layer_scale2", "mlp.fc1": "mlp.fc1"}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in to_hf_embeddings:
            out[prefix + to_hf_embeddings[key]] = value
            continue
        match = _TIMM_BLOCK_KEY.fullmatch(key)
        if match is None:
            out[prefix + key] = value
            continue
        index, module, leaf = match.groups()
        layer = f"{prefix}encoder.layer.{index}."
        leaf = "lambda1" if leaf == "gamma" else leaf
        if module == "attn.qkv":
            for name, part in zip(qkv, value.chunk(3, dim=0)):
                out[f"{layer}{name}.{leaf}"] = part
        elif module == "mlp.fc1" and spec.mlp == "swiglu":
            if legacy:
                out[f"{layer}mlp.weights_in.{leaf}"] = value
            else:
                gate, up = value.chunk(2, dim=0)
                out[f"{layer}mlp.gate_proj.{leaf}"], out[f"{layer}mlp.up_proj.{leaf}"] = gate, up
        elif module in names:
            out[f"{layer}{names[module]}.{leaf}"] = value
        elif module in to_hf_layer:
            out[f"{layer}{to_hf_layer[module]}.{leaf}"] = value
        else:
            out[prefix + key] = value
    if reference_keys is None or prefix + "embeddings.mask_token" in reference:
        out[prefix + "embeddings.mask_token"] = _zeros_like_state(state, 1, spec.embed_dim)
    return out


def _zeros_like_state(state: Mapping[str, torch.Tensor], *shape: int) -> torch.Tensor:
    """Zeros with the dtype of the state's floating tensors (a created mask token)."""
    dtype = next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)
    return torch.zeros(*shape, dtype=dtype)


@lru_cache(maxsize=1)
def _installed_hf_keys() -> list[str]:
    """State-dict keys of a tiny ``Dinov2Model`` of the installed transformers."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, image_size=2, patch_size=1)
    return list(Dinov2Model(config).state_dict())


def _describe(spec: ViTSpec) -> str:
    extra = [f"{spec.num_registers} registers"] * bool(spec.num_registers) + ["SwiGLU"] * (spec.mlp == "swiglu")
    return (
        f"{spec.kind} patch {spec.patch_size}, dim {spec.embed_dim}, depth {spec.depth}, heads {spec.num_heads}, "
        f"{spec.img_size} px" + "".join(f", {e}" for e in extra)
    )
