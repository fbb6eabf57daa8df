"""The registered backbone names: cards, providers, the per-family contract, errors."""

import warnings

import pytest
import torch

import mosic
from mosic.backbones import AliasWarning, BACKBONES
from mosic.backbones.catalog import CARDS

PAPER_NAMES = [
    "dino-s16", "dino-b16",
    "dinov2-s14", "dinov2-b14", "dinov2-l14", "dinov2-g14",
    "dinov2r-s14", "dinov2r-b14", "dinov2r-l14", "dinov2r-g14",
    "eva-clip-b16", "eva-clip-l14", "eva-clip-b14",
]  # fmt: skip

# small random versions of each family: (name, overrides, prefix tokens)
SMALL = {
    "dino-s16": dict(depth=2, embed_dim=64, num_heads=2, img_size=64),
    "dinov2-s14": dict(depth=2, embed_dim=64, num_heads=2, img_size=56),
    "dinov2r-s14": dict(depth=2, embed_dim=64, num_heads=2, img_size=56),
    "dinov2-g14": dict(depth=1, embed_dim=96, num_heads=2, img_size=56),
    "eva-clip-b16": dict(depth=2, embed_dim=64, num_heads=2, img_size=64),
}
PREFIX = {"dino-s16": 1, "dinov2-s14": 1, "dinov2r-s14": 5, "dinov2-g14": 1, "eva-clip-b16": 1}


def small(name, source=None, seed=0):
    torch.manual_seed(seed)
    kwargs = {} if source is None else {"source": source}
    return mosic.create_backbone(name, pretrained=False, **kwargs, **SMALL[name]).eval()


def meta_build(name, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AliasWarning)
        with torch.device("meta"):
            return mosic.create_backbone(name, pretrained=False, **kwargs)


def test_every_paper_name_is_registered_with_a_card():
    assert set(PAPER_NAMES) <= set(mosic.list_backbones())
    for name in PAPER_NAMES:
        card = BACKBONES.card(name)
        assert card.name == name and card.licence and card.paper and card.weights
        assert card.default_source == "timm" and "timm" in card.sources
        assert card.summary().startswith(name)


@pytest.mark.parametrize("name", PAPER_NAMES)
def test_card_matches_the_architecture_built(name):
    """The card's spec (patch, dim, depth, heads, registers, native size) is what timm builds."""
    card = CARDS[name]
    backbone = meta_build(name)
    assert backbone.spec == card.spec
    assert (backbone.patch_size, backbone.embed_dim, backbone.num_prefix_tokens) == (
        card.patch_size,
        card.embed_dim,
        card.num_prefix_tokens,
    )
    assert tuple(backbone.mean) == card.mean and tuple(backbone.std) == card.std


@pytest.mark.parametrize("name", ["dinov2-s14", "dinov2r-b14", "dinov2-g14", "eva-clip-b16"])
def test_providers_build_the_same_number_of_parameters(name):
    card = CARDS[name]
    counts = {s: sum(p.numel() for p in meta_build(name, source=s).parameters()) for s in card.sources}
    assert len(counts) == 2
    if "hf" in counts:
        # HF's Dinov2Model also holds the (unused) mask token; with registers its position
        # embedding keeps a CLS slot that timm folds into cls_token: one embed_dim vector each
        counts["hf"] -= card.embed_dim * (1 + (card.spec.num_registers > 0))
    assert len(set(counts.values())) == 1, counts


def test_sizes_and_prefix_tokens_of_the_families():
    expected = {  # name: (patch, dim, prefix tokens, native px)
        "dino-b16": (16, 768, 1, 224),
        "dinov2-l14": (14, 1024, 1, 518),
        "dinov2r-g14": (14, 1536, 5, 518),
        "eva-clip-l14": (14, 1024, 1, 224),
    }
    for name, (patch, dim, prefix, native) in expected.items():
        card = CARDS[name]
        assert (card.patch_size, card.embed_dim, card.num_prefix_tokens, card.native_resolution) == (
            patch, dim, prefix, native,
        )  # fmt: skip


def test_eva_clip_b14_is_the_patch16_model_and_says_so():
    card = CARDS["eva-clip-b14"]
    assert card.alias_of == "eva-clip-b16" and card.patch_size == 16
    assert "16x16 patches" in card.notes and "no EVA-CLIP B/14" in card.notes
    assert card.sources == CARDS["eva-clip-b16"].sources
    from mosic.backbones import catalog

    catalog._warned_aliases.discard("eva-clip-b14")
    with pytest.warns(AliasWarning, match="patch-16"):
        backbone = mosic.create_backbone("eva-clip-b14", pretrained=False, **SMALL["eva-clip-b16"])
    assert backbone.patch_size == 16 and backbone.card.name == "eva-clip-b14"


@pytest.mark.parametrize("name", list(SMALL))
def test_family_contract_on_cpu(name):
    backbone = small(name)
    p = backbone.patch_size
    size = SMALL[name]["img_size"]
    n = size // p
    assert backbone.num_prefix_tokens == PREFIX[name]
    images = torch.randn(2, 3, size, size)
    tokens = backbone.patch_tokens(images)
    assert tokens.shape == (2, n, n, backbone.embed_dim)
    # prefix tokens (CLS, registers) are removed: the rest of timm's output, after the final norm
    reference = backbone.model.forward_features(images)[:, PREFIX[name] :].reshape(tokens.shape)
    assert torch.allclose(tokens, reference, atol=1e-5)
    # a non-native size divisible by the patch: position embedding interpolated (EVA: rope rebuilt)
    other = backbone.patch_tokens(torch.randn(1, 3, size + 2 * p, size - p))
    assert other.shape == (1, n + 2, n - 1, backbone.embed_dim) and torch.isfinite(other).all()
    with pytest.raises(ValueError, match=f"divisible by the patch size {p}"):
        backbone.patch_tokens(torch.randn(1, 3, size + 1, size))


@pytest.mark.parametrize("name", list(SMALL))
def test_token_masking_per_family(name):
    backbone = small(name)
    p, size = backbone.patch_size, SMALL[name]["img_size"]
    n = size // p
    images = torch.randn(2, 3, size, size)
    mask = torch.zeros(2, n, n, dtype=torch.bool)
    mask[0, 0, :2] = True
    mask[1, -1, -2:] = True
    out = backbone.patch_tokens(images, mask)
    assert torch.equal(out[mask], torch.zeros_like(out[mask]))
    assert (out[~mask].abs().sum(-1) > 0).all()
    changed = images.clone()
    changed[0, :, :p, :p] += 5.0  # the pixels of the dropped token (0, 0)
    assert torch.allclose(backbone.patch_tokens(changed, mask)[0], out[0], atol=1e-5)
    assert torch.allclose(backbone.patch_tokens(images, torch.zeros_like(mask)), backbone.patch_tokens(images), atol=1e-5)


def test_train_last_blocks_policy_per_family():
    for name in ("dinov2r-s14", "eva-clip-b16"):
        backbone = small(name)
        backbone.set_trainable(1)
        trainable = {n for n, _ in backbone.trainable_parameters()}
        assert trainable and all(n.startswith(("model.blocks.1.", "model.norm.")) for n in trainable)


def test_open_clip_provider_builds_eva_with_open_clip_keys():
    backbone = small("eva-clip-b16", source="open_clip")
    assert backbone.weight_format == "open_clip"
    keys = list(backbone.weights_module().state_dict())
    assert keys and all(k.startswith("visual.trunk.") for k in keys)
    assert backbone.patch_tokens(torch.randn(1, 3, 64, 48)).shape == (1, 4, 3, 64)


def test_source_and_argument_errors():
    with pytest.raises(ValueError, match=r"not available from source 'hf'; its sources are \['timm'\]"):
        mosic.create_backbone("dino-s16", source="hf")
    with pytest.raises(ValueError, match="resized random model"):
        mosic.create_backbone("dinov2-s14", pretrained=True, depth=2)
    with pytest.raises(ValueError, match="not both"):
        mosic.create_backbone("dinov2-s14", pretrained="a.safetensors", weights="b.safetensors")
    with pytest.raises(ValueError, match="architecture overrides"):
        mosic.create_backbone("eva-clip-b16", source="open_clip", drop_path_rate=0.1)


@pytest.mark.parametrize("name,source", [("dino-s16", "timm"), ("eva-clip-b16", "open_clip")])
def test_pretrained_download_offline_says_how_to_pass_a_local_file(name, source, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match=r"pretrained='/path/to/.*or pretrained=False"):
        mosic.create_backbone(name, pretrained=True, source=source)


def test_trainer_takes_the_backbone_source_from_the_config(synthetic):
    from conftest import tiny_config

    config = tiny_config(
        **{
            "backbone.name": "eva-clip-b16",
            "backbone.source": "open_clip",
            "backbone.kwargs": dict(depth=2, embed_dim=48, num_heads=2, img_size=32, patch_size=8),
            "train.max_steps": 2,
        }
    )
    trainer = mosic.PostPretrainer(config=config)
    assert trainer.student.weight_format == "open_clip"
    trainer.fit(synthetic)
    assert trainer.step == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in trainer.history)


def test_open_clip_and_timm_providers_agree_on_the_same_weights():
    """timm weights converted to open_clip's keys (visual.trunk.*) give identical tokens."""
    from mosic.backbones.formats import from_timm

    timm_eva = small("eva-clip-b16", seed=1)
    with torch.no_grad():
        for p in timm_eva.parameters():
            p.normal_(0, 0.2)
    clip_eva = small("eva-clip-b16", source="open_clip", seed=2)
    state = from_timm(timm_eva.model.state_dict(), timm_eva.spec, "open_clip")
    clip_eva.load_weights(state)
    images = torch.randn(2, 3, 64, 80)
    assert torch.equal(clip_eva.patch_tokens(images), timm_eva.patch_tokens(images))
