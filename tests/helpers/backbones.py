"""Small backbones whose EVERY parameter is random (layer scales and norm weights in [0.5, 1.5],
the rest N(0, 0.1^2)), and the tests' own writers of each weight format, from the documented
facts (not from mosic.backbones.formats). Used by tests/backbones/ and tests/test_gpu_path.py."""

import torch

from mosic.backbones.formats import from_timm
from mosic.backbones.hf_dinov2 import HFDinov2
from mosic.backbones.timm_vit import TimmViT


SMALL = dict(img_size=56, depth=2, embed_dim=96, num_heads=2)


ARCHS = {
    "small": "vit_small_patch14_dinov2",
    "reg4": "vit_small_patch14_reg4_dinov2",
    "giant": "vit_giant_patch14_dinov2",  # fused SwiGLU
}


ATOL = 1e-5


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values in every parameter (scales in [0.5, 1.5], others N(0, 0.1^2))."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = name.endswith(("gamma", "lambda1")) or (p.ndim == 1 and "norm" in name and name.endswith("weight"))
            p.copy_(torch.rand(p.shape, generator=g) + 0.5 if scale else torch.randn(p.shape, generator=g) * 0.1)
    return module


def timm_backbone(kind: str, seed: int = 0) -> TimmViT:
    torch.manual_seed(seed)
    backbone = TimmViT(ARCHS[kind], pretrained=False, **SMALL).eval()
    randomize(backbone.model, seed)
    return backbone


def eva_backbone(seed: int = 0) -> TimmViT:
    torch.manual_seed(seed)
    backbone = TimmViT("eva02_base_patch16_clip_224", pretrained=False, img_size=64, depth=2, embed_dim=64, num_heads=2)
    randomize(backbone.model.eval(), seed)
    return backbone


def images(size: int = 56, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def hub_state(timm_state: dict, registers: bool, swiglu: bool, cls_pos: torch.Tensor) -> dict:
    """facebookresearch/dinov2 hub keys. With registers the (1, 1+N, D) pos_embed gets a CLS
    row ``cls_pos`` (random: the hub adds it to cls_token, timm has folded it in)."""
    out = {}
    for key, value in timm_state.items():
        if swiglu:
            key = key.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")
        out[key] = value
    out["mask_token"] = torch.zeros(1, timm_state["cls_token"].shape[-1])
    if registers:
        out["register_tokens"] = out.pop("reg_token")
        out["pos_embed"] = torch.cat([cls_pos, timm_state["pos_embed"]], dim=1)
        out["cls_token"] = timm_state["cls_token"] - cls_pos
    return out


def hf_state(timm_state: dict, legacy: bool, swiglu: bool, registers: bool, cls_pos=None) -> dict:
    """Hugging Face Dinov2(WithRegisters)Model keys: hub names (legacy) or transformers 5's."""
    out = {
        "embeddings.cls_token": timm_state["cls_token"],
        "embeddings.mask_token": torch.zeros(1, timm_state["cls_token"].shape[-1]),
        "embeddings.position_embeddings": timm_state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": timm_state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": timm_state["patch_embed.proj.bias"],
        "layernorm.weight": timm_state["norm.weight"],
        "layernorm.bias": timm_state["norm.bias"],
    }
    if registers:
        out["embeddings.register_tokens"] = timm_state["reg_token"]
        out["embeddings.position_embeddings"] = torch.cat([cls_pos, timm_state["pos_embed"]], dim=1)
        out["embeddings.cls_token"] = timm_state["cls_token"] - cls_pos
    depth = 1 + max(int(k.split(".")[1]) for k in timm_state if k.startswith("blocks."))
    for i in range(depth):
        t, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for leaf in ("weight", "bias"):
            q, k, v = timm_state[f"{t}attn.qkv.{leaf}"].chunk(3)
            names = ("attention.attention.query", "attention.attention.key", "attention.attention.value") if legacy \
                else ("attention.q_proj", "attention.k_proj", "attention.v_proj")
            out.update({f"{h}{n}.{leaf}": x for n, x in zip(names, (q, k, v))})
            out[f"{h}attention.{'output.dense' if legacy else 'o_proj'}.{leaf}"] = timm_state[f"{t}attn.proj.{leaf}"]
            out[f"{h}norm1.{leaf}"] = timm_state[f"{t}norm1.{leaf}"]
            out[f"{h}norm2.{leaf}"] = timm_state[f"{t}norm2.{leaf}"]
            fc1, fc2 = timm_state[f"{t}mlp.fc1.{leaf}"], timm_state[f"{t}mlp.fc2.{leaf}"]
            if not swiglu:
                out[f"{h}mlp.fc1.{leaf}"], out[f"{h}mlp.fc2.{leaf}"] = fc1, fc2
            elif legacy:
                out[f"{h}mlp.weights_in.{leaf}"], out[f"{h}mlp.weights_out.{leaf}"] = fc1, fc2
            else:
                gate, up = fc1.chunk(2)  # timm GluMlp(gate_last=False): act(first half) * second half
                out[f"{h}mlp.gate_proj.{leaf}"], out[f"{h}mlp.up_proj.{leaf}"] = gate, up
                out[f"{h}mlp.down_proj.{leaf}"] = fc2
        out[f"{h}layer_scale1.lambda1"] = timm_state[f"{t}ls1.gamma"]
        out[f"{h}layer_scale2.lambda1"] = timm_state[f"{t}ls2.gamma"]
    return out


def open_clip_text_keys() -> dict:
    """The non-visual keys of a real (tiny) open_clip CLIP: transformer.*, token_embedding..."""
    import open_clip

    clip = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=dict(layers=1, width=32, patch_size=8, image_size=16, head_width=16),
        text_cfg=dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1),
    )
    return {k: v for k, v in clip.state_dict().items() if not k.startswith("visual.")}


def file_in_format(fmt: str, kind: str, timm_state: dict) -> tuple[dict, str]:
    """(state dict in ``fmt`` of the timm model, expected detected prefix)."""
    registers, swiglu = kind == "reg4", kind == "giant"
    cls_pos = torch.randn(1, 1, timm_state["cls_token"].shape[-1], generator=torch.Generator().manual_seed(7))
    if fmt == "timm":
        return dict(timm_state), ""
    if fmt == "torchhub":
        return hub_state(timm_state, registers, swiglu, cls_pos), ""
    if fmt in ("hf-legacy", "hf-5"):
        return hf_state(timm_state, fmt == "hf-legacy", swiglu, registers, cls_pos), ""
    if fmt == "hf-classifier":  # Dinov2ForImageClassification
        state = {"dinov2." + k: v for k, v in hf_state(timm_state, True, swiglu, registers, cls_pos).items()}
        return {**state, "classifier.weight": torch.randn(10, 192), "classifier.bias": torch.randn(10)}, "dinov2."
    if fmt == "open_clip":
        state = {"visual.trunk." + k: v for k, v in timm_state.items()}
        state["visual.trunk.head.weight"], state["visual.trunk.head.bias"] = torch.randn(16, 96), torch.randn(16)
        return {**state, **open_clip_text_keys()}, "visual.trunk."
    if fmt == "prefixed":  # MoSiC / NeCo / TimeTuning release: the authors' strict=False load
        state = {"feature_extractor.model." + k: v for k, v in timm_state.items()}
        state.update({"mlp_head.0.weight": torch.randn(32, 96), "mlp_head.0.bias": torch.randn(32),
                      "mlp_head.2.weight": torch.randn(16, 32), "prototypes": torch.randn(8, 16)})
        return state, "feature_extractor.model."
    raise AssertionError(fmt)


def save(state: dict, path) -> str:
    from safetensors.torch import save_file

    if str(path).endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return str(path)


def hf_twin(kind: str, seed: int = 0):
    """(timm backbone, HF backbone with the same random weights)."""
    timm_model = timm_backbone(kind, seed)
    hf = HFDinov2(timm_model.spec).eval()
    hf.model.load_state_dict(from_timm(timm_model.model.state_dict(), timm_model.spec, "hf"), strict=True)
    return timm_model, hf
