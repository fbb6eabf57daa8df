"""Export a post-pretrained backbone for use without mosic: timm, Hugging Face or torch.hub.

``mosic export RUN_DIR --format timm OUT`` writes the teacher (the model the paper
evaluates; ``--model student`` for the student) so that the matching library loads it:

- ``timm``: ``model.safetensors`` + ``config.json`` written by timm's own
  ``save_for_hf``: ``timm.create_model("local-dir:OUT", pretrained=True)``, or
  ``timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file="OUT/model.safetensors"), num_classes=0)``.
- ``hf`` (DINOv2, DINOv2-R): written by transformers' ``save_pretrained``:
  ``transformers.AutoModel.from_pretrained("OUT")``.
- ``torchhub`` (DINO, DINOv2, DINOv2-R): the official facebookresearch state-dict
  format as ``model.pth`` (plain tensors, loads with ``weights_only=True``) and
  ``model.safetensors``: ``torch.hub.load(repo, entry, pretrained=False).load_state_dict(...)``.

Every export also writes ``mosic.json``: where the weights came from (run, step, model,
backbone card) and how to load them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch

from .backbones.base import Backbone
from .backbones.formats import from_timm, to_timm

ExportFormat = Literal["timm", "hf", "torchhub"]
FORMATS: tuple[str, ...] = ("timm", "hf", "torchhub")


def timm_state_dict(backbone: Backbone) -> dict[str, torch.Tensor]:
    """The backbone's weights in timm's key format (detached CPU tensors)."""
    if backbone.spec is None or backbone.weight_format is None:
        raise ValueError(
            f"{type(backbone).__name__} has no spec/weight_format: only backbones built from the registry's "
            "providers (timm, hf, open_clip) can be exported"
        )
    state = {k: v.detach().cpu() for k, v in backbone.weights_module().state_dict().items()}
    if backbone.weight_format != "timm":
        state, _ = to_timm(state, backbone.spec, backbone.weight_format)
    return state


def export_backbone(
    source: str | Path | Backbone,
    out_dir: str | Path,
    format: ExportFormat = "timm",
    model: Literal["teacher", "student"] = "teacher",
) -> Path:
    """Write a backbone (or a run's teacher/student) in ``format`` to ``out_dir``.

    Args:
        source: a run folder, a checkpoint folder (``step_*``), or a built backbone.
        out_dir: created if needed; existing files of the same names are replaced.
        format: ``"timm"``, ``"hf"`` or ``"torchhub"``.
        model: which network of a run to export; the paper evaluates the ``"teacher"``.
    Returns:
        ``out_dir``.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {list(FORMATS)}")
    provenance: dict = {"format": format}
    if isinstance(source, Backbone):
        backbone = source
    else:
        backbone, provenance = _backbone_from_run(source, model)
        provenance["format"] = format
    card = backbone.card
    provenance["backbone"] = card.name if card else type(backbone).__name__
    provenance["spec"] = backbone.spec.model_dump() if backbone.spec else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = timm_state_dict(backbone)
    if format == "timm":
        provenance["load"] = _export_timm(backbone, state, out)
    elif format == "hf":
        provenance["load"] = _export_hf(backbone, state, out)
    else:
        provenance["load"] = _export_torchhub(backbone, state, out)
    (out / "mosic.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return out


def _backbone_from_run(path: str | Path, model: str) -> tuple[Backbone, dict]:
    from .checkpoint import resolve_checkpoint
    from .train import PostPretrainer

    if model not in ("teacher", "student"):
        raise ValueError(f"model must be 'teacher' or 'student', got {model!r}")
    checkpoint = resolve_checkpoint(path)
    trainer = PostPretrainer.load(checkpoint)
    backbone = trainer.teacher if model == "teacher" else trainer.student
    info = {"run": str(Path(path).resolve()), "checkpoint": str(checkpoint), "step": trainer.step, "model": model}
    return backbone.eval(), info


def _timm_arch(backbone: Backbone) -> str:
    arch = getattr(backbone, "arch", None)
    if arch is None and backbone.card is not None:
        arch = backbone.card.sources.get("timm")
    if arch is None:
        raise ValueError(f"{type(backbone).__name__} has no timm architecture to export to")
    return arch


def _export_timm(backbone: Backbone, state: dict, out: Path) -> str:
    import timm
    from timm.models import save_for_hf

    spec = backbone.spec
    arch = _timm_arch(backbone)
    args = dict(
        img_size=spec.img_size, patch_size=spec.patch_size, embed_dim=spec.embed_dim, depth=spec.depth, num_heads=spec.num_heads
    )
    model = timm.create_model(arch, pretrained=False, num_classes=0, dynamic_img_size=True, **args)
    model.load_state_dict(state, strict=True)
    data = {"pretrained_cfg": {"mean": list(backbone.mean), "std": list(backbone.std)}}
    save_for_hf(model, str(out), model_config=data, safe_serialization=True)
    name = arch.split(".")[0]
    return (
        f"timm.create_model('local-dir:{out}', pretrained=True)  # or "
        f"timm.create_model('{name}', pretrained=True, num_classes=0, dynamic_img_size=True, "
        f"pretrained_cfg_overlay=dict(file='{out / 'model.safetensors'}'), **config['model_args'])"
    )


def _export_hf(backbone: Backbone, state: dict, out: Path) -> str:
    from .backbones.hf_dinov2 import HFDinov2

    spec = backbone.spec
    if spec.kind != "vit" or backbone.card is None or "hf" not in backbone.card.sources:
        name = backbone.card.name if backbone.card else type(backbone).__name__
        raise ValueError(
            f"{name} has no Hugging Face transformers model (hf export covers DINOv2 and DINOv2-R); "
            "use --format timm"
        )
    hf = HFDinov2(spec, pretrained=False, mean=backbone.mean, std=backbone.std)
    target = hf.weights_module()
    target.load_state_dict(from_timm(state, spec, "hf", reference_keys=list(target.state_dict())), strict=True)
    target.save_pretrained(str(out), safe_serialization=True)
    return f"transformers.AutoModel.from_pretrained('{out}')"


def _export_torchhub(backbone: Backbone, state: dict, out: Path) -> str:
    from safetensors.torch import save_file

    card = backbone.card
    if card is None or card.torchhub is None:
        name = card.name if card else type(backbone).__name__
        raise ValueError(f"{name} has no official torch.hub model (torchhub export covers DINO, DINOv2, DINOv2-R)")
    hub_state = {k: v.contiguous() for k, v in from_timm(state, backbone.spec, "torchhub").items()}
    torch.save(hub_state, out / "model.pth")
    save_file(hub_state, str(out / "model.safetensors"))
    repo, _, entry = card.torchhub.rpartition(":")
    return (
        f"model = torch.hub.load('{repo}', '{entry}', pretrained=False); "
        f"model.load_state_dict(torch.load('{out / 'model.pth'}', weights_only=True))"
    )
