"""Property-based fuzzing (hypothesis, derandomized: the same examples every run) of the
public API: config values and tensor shapes/dtypes.

Properties:
* RunConfig: every field, set to any value (from_dict and with_overrides), either gives a
  config that survives a YAML and a JSON save/load exactly, or raises ConfigError naming
  the field; ``section.key=TEXT`` overrides with any text never raise anything else.
  Examples per test: 50, or ``MOSIC_FUZZ_EXAMPLES``.
* sinkhorn, sample_at_points, Tracks, query_grid, ViewTransform, kept_indices: valid inputs
  give outputs of the documented shape with finite values and the documented invariants;
  invalid ones raise ValueError/TypeError, never an error from deep inside torch.
"""

import math
import os
import string

import pytest
import torch

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mosic.backbones.token_drop import kept_indices  # noqa: E402
from mosic.config import ConfigError, RunConfig  # noqa: E402
from mosic.data.transforms import ViewTransform  # noqa: E402
from mosic.points import sample_at_points  # noqa: E402
from mosic.sinkhorn import sinkhorn  # noqa: E402
from mosic.tracks import Tracks, query_grid  # noqa: E402

#: MOSIC_FUZZ_EXAMPLES=2000 for a deeper (still deterministic) run
FUZZ = settings(
    derandomize=True,
    max_examples=int(os.environ.get("MOSIC_FUZZ_EXAMPLES", "50")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# ----------------------------------------------------------------------------- config

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


# ----------------------------------------------------------------------------- sinkhorn

FLOATS = st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16])


@FUZZ
@given(
    m=st.integers(0, 40),
    k=st.integers(1, 12),
    epsilon=st.floats(0.02, 2.0),
    iterations=st.integers(1, 15),
    dtype=FLOATS,
    masked=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_sinkhorn_valid(m, k, epsilon, iterations, dtype, masked, seed):
    g = torch.Generator().manual_seed(seed)
    scores = (torch.rand(m, k, generator=g) * 2 - 1).to(dtype)
    mask = torch.rand(m, generator=g) < 0.7 if masked else None
    q = sinkhorn(scores, epsilon, iterations, mask)
    assert q.shape == (m, k) and q.dtype == torch.float32
    assert torch.isfinite(q).all() and (q >= 0).all()
    used = torch.ones(m, dtype=torch.bool) if mask is None else mask
    assert torch.allclose(q[used].sum(1), torch.ones(int(used.sum())), atol=1e-4)  # used rows sum to 1
    assert torch.equal(q[~used], torch.zeros(int((~used).sum()), k))  # the others are zero


@FUZZ
@given(
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=4),
    dtype=st.sampled_from([torch.float32, torch.int64, torch.bool, torch.uint8]),
    epsilon=st.one_of(st.floats(allow_nan=True), st.integers(-2, 2), st.text(max_size=2), st.none()),
    iterations=st.one_of(st.integers(-2, 3), st.floats(0, 3), st.booleans(), st.none()),
    mask_len=st.one_of(st.none(), st.integers(0, 5)),
)
def test_sinkhorn_invalid(shape, dtype, epsilon, iterations, mask_len):
    scores = torch.zeros(shape, dtype=dtype)
    mask = None if mask_len is None else torch.ones(mask_len, dtype=torch.bool)
    valid = (
        len(shape) == 2 and shape[1] >= 1 and dtype == torch.float32
        and isinstance(epsilon, (int, float)) and not isinstance(epsilon, bool) and math.isfinite(epsilon) and epsilon > 0
        and isinstance(iterations, int) and not isinstance(iterations, bool) and iterations >= 1
        and (mask_len is None or mask_len == shape[0])
    )  # fmt: skip
    if valid:
        assert sinkhorn(scores, epsilon, iterations, mask).shape == tuple(shape)
    else:
        with pytest.raises((ValueError, TypeError), match="sinkhorn: "):
            sinkhorn(scores, epsilon, iterations, mask)


# ----------------------------------------------------------------------------- sample_at_points


@FUZZ
@given(
    b=st.integers(1, 3),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    d=st.integers(1, 5),
    n=st.integers(0, 10),
    patch=st.integers(1, 16),
    dtype=FLOATS,
    seed=st.integers(0, 2**16),
)
def test_sample_at_points_valid(b, h, w, d, n, patch, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(b, h, w, d, generator=g).to(dtype)
    # anywhere, including outside the image (read from the border patch)
    xy = torch.rand(b, n, 2, generator=g) * torch.tensor([w * patch + 20.0, h * patch + 20.0]) - 10
    for mode in ("bilinear", "nearest"):
        out = sample_at_points(tokens, xy.to(dtype), patch, mode)
        assert out.shape == (b, n, d) and out.dtype == torch.float32 and torch.isfinite(out).all()
        lo, hi = tokens.float().amin((1, 2)), tokens.float().amax((1, 2))  # (B, D)
        assert (out >= lo[:, None] - 1e-5).all() and (out <= hi[:, None] + 1e-5).all()  # convex combinations
    # at patch centres: the token itself
    rows = torch.randint(0, h, (b, n), generator=g)
    cols = torch.randint(0, w, (b, n), generator=g)
    centres = torch.stack([cols, rows], -1).float() * patch + (patch - 1) / 2
    expected = tokens.float()[torch.arange(b)[:, None], rows, cols]
    assert torch.equal(sample_at_points(tokens, centres, patch, "nearest"), expected)
    torch.testing.assert_close(sample_at_points(tokens, centres, patch, "bilinear"), expected, atol=1e-5, rtol=1e-5)


@FUZZ
@given(
    tokens_shape=st.lists(st.integers(0, 3), min_size=3, max_size=5),
    xy_shape=st.lists(st.integers(0, 3), min_size=1, max_size=4),
    tokens_dtype=st.sampled_from([torch.float32, torch.int64]),
    xy_dtype=st.sampled_from([torch.float32, torch.float16, torch.int64, torch.int32]),
    patch=st.one_of(st.integers(-1, 9), st.floats(0, 9), st.none()),
    mode=st.sampled_from(["bilinear", "nearest", "bicubic", ""]),
)
def test_sample_at_points_invalid(tokens_shape, xy_shape, tokens_dtype, xy_dtype, patch, mode):
    tokens, xy = torch.zeros(tokens_shape, dtype=tokens_dtype), torch.zeros(xy_shape, dtype=xy_dtype)
    valid = (
        len(tokens_shape) == 4 and tokens_dtype.is_floating_point and min(tokens_shape[1:3]) >= 1
        and len(xy_shape) == 3 and xy_shape[0] == tokens_shape[0] and xy_shape[2] == 2 and xy_dtype.is_floating_point
        and isinstance(patch, int) and patch >= 1 and mode in ("bilinear", "nearest")
    )  # fmt: skip
    if valid:
        assert sample_at_points(tokens, xy, patch, mode).shape == (tokens_shape[0], xy_shape[1], tokens_shape[3])
    else:
        with pytest.raises((ValueError, TypeError), match="sample_at_points: "):
            sample_at_points(tokens, xy, patch, mode)


# ----------------------------------------------------------------------------- tracks, query grid


@FUZZ
@given(
    xy_shape=st.lists(st.integers(0, 3), min_size=1, max_size=5),
    visible_shape=st.lists(st.integers(0, 3), min_size=0, max_size=4),
    visible_dtype=st.sampled_from([torch.bool, torch.uint8, torch.float32]),
)
def test_tracks_shapes(xy_shape, visible_shape, visible_dtype):
    xy, visible = torch.zeros(xy_shape), torch.ones(visible_shape, dtype=visible_dtype)
    if len(xy_shape) == 4 and xy_shape[-1] == 2 and visible_shape == xy_shape[:-1]:
        tracks = Tracks(xy, visible)
        assert tracks.visible.dtype == torch.bool and tracks.visible.shape == tracks.xy.shape[:-1]
        both = Tracks.cat([tracks, tracks], dim=2)
        assert both.xy.shape[2] == 2 * xy_shape[2] and both.visible.shape == both.xy.shape[:-1]
    else:
        with pytest.raises(ValueError, match=r"Tracks\.(xy|visible) must be"):
            Tracks(xy, visible)


@FUZZ
@given(height=st.integers(1, 600), width=st.integers(1, 600), grid=st.integers(-2, 24), frame=st.integers(0, 30))
def test_query_grid(height, width, grid, frame):
    if grid < 1:
        with pytest.raises(ValueError, match="grid_size must be an int >= 1"):
            query_grid(height, width, grid, frame)
        return
    q = query_grid(height, width, grid, frame)
    assert q.shape == (grid * grid, 3) and q.dtype == torch.float32 and torch.isfinite(q).all()
    assert (q[:, 0] == frame).all()
    assert (q[:, 1] >= -0.5).all() and (q[:, 1] <= width - 0.5).all()  # inside the image extent
    assert (q[:, 2] >= -0.5).all() and (q[:, 2] <= height - 0.5).all()
    cells = q[:, 1:].reshape(grid, grid, 2)  # row-major: y outer, x inner
    assert (cells[:, 1:, 0] > cells[:, :-1, 0]).all() and (cells[1:, :, 1] > cells[:-1, :, 1]).all()
    # the centre of the grid is the centre of the image
    assert torch.allclose(q[:, 1:].mean(0), torch.tensor([(width - 1) / 2, (height - 1) / 2]), atol=1e-3)


# ----------------------------------------------------------------------------- view transform


@FUZZ
@given(
    x0=st.integers(0, 100),
    y0=st.integers(0, 100),
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    out_h=st.integers(1, 300),
    out_w=st.integers(1, 300),
    flip=st.booleans(),
    points=st.lists(st.tuples(st.floats(-50, 500), st.floats(-50, 500)), min_size=1, max_size=8),
)
def test_view_transform_round_trip(x0, y0, width, height, out_h, out_w, flip, points):
    view = ViewTransform(x0, y0, width, height, (out_h, out_w), flip)
    xy = torch.tensor(points, dtype=torch.float64)
    inside = view.points_to_view(xy)
    assert inside.shape == xy.shape and torch.isfinite(inside).all()
    torch.testing.assert_close(view.points_to_source(inside), xy, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(view.points_to_view(view.points_to_source(xy)), xy, atol=1e-9, rtol=1e-9)
    # the crop box's extent is the view's extent
    corners = torch.tensor([[x0 - 0.5, y0 - 0.5], [x0 + width - 0.5, y0 + height - 0.5]], dtype=torch.float64)
    mapped = view.points_to_view(corners)
    centre = torch.tensor([[x0 + (width - 1) / 2, y0 + (height - 1) / 2]], dtype=torch.float64)
    assert view.inside_view(view.points_to_view(centre)).all()
    assert sorted(mapped[:, 0].tolist()) == pytest.approx([-0.5, out_w - 0.5])
    assert sorted(mapped[:, 1].tolist()) == pytest.approx([-0.5, out_h - 0.5])


# ----------------------------------------------------------------------------- token dropping


@FUZZ
@given(b=st.integers(1, 4), h=st.integers(1, 6), w=st.integers(1, 6), drop=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_kept_indices_valid(b, h, w, drop, seed):
    g = torch.Generator().manual_seed(seed)
    k = round(drop * h * w)
    order = torch.rand(b, h * w, generator=g).argsort(1)
    mask = torch.zeros(b, h * w, dtype=torch.bool).scatter(1, order[:, :k], True).view(b, h, w)
    keep = kept_indices(mask, b, h, w)
    assert keep.shape == (b, h * w - k) and keep.dtype == torch.int64
    assert (keep[:, 1:] > keep[:, :-1]).all()  # increasing, so distinct
    for i in range(b):
        assert keep[i].tolist() == torch.nonzero(~mask[i].flatten()).flatten().tolist()


@FUZZ
@given(
    shape=st.lists(st.integers(1, 4), min_size=2, max_size=4),
    dtype=st.sampled_from([torch.bool, torch.uint8, torch.float32]),
    uneven=st.booleans(),
)
def test_kept_indices_invalid(shape, dtype, uneven):
    b, h, w = 2, 3, 3
    mask = torch.zeros(shape, dtype=dtype)
    if tuple(shape) == (b, h, w) and dtype == torch.bool:
        if uneven:
            mask[0, 0, 0] = True  # image 0 drops one token, image 1 none
            with pytest.raises(ValueError, match="same number of tokens"):
                kept_indices(mask, b, h, w)
        else:
            assert kept_indices(mask, b, h, w).shape == (b, h * w)
        return
    with pytest.raises(ValueError, match=r"token_mask must be a bool tensor of shape \(B, h, w\)"):
        kept_indices(mask, b, h, w)


# ----------------------------------------------------------------------------- gaps found by fuzzing


def _raises_readably(call) -> None:
    with pytest.raises((ValueError, TypeError)):
        call()


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda: Tracks("xy", "visible"), id="tracks-non-tensor"),
        pytest.param(lambda: Tracks(torch.zeros(1, 2, 3, 2, dtype=torch.long), torch.ones(1, 2, 3, dtype=torch.bool)), id="tracks-int-xy"),
        pytest.param(lambda: query_grid(32, 32, 2.5), id="query_grid-float-size"),
        pytest.param(lambda: query_grid(0, 32, 2), id="query_grid-empty-image"),
        pytest.param(lambda: ViewTransform(0, 0, 0, 10, (10, 10)), id="view-transform-empty-box"),
        pytest.param(lambda: ViewTransform(0, 0, 10, 10, (0, 10)), id="view-transform-empty-output"),
    ],
)
def test_gaps_found_by_fuzzing_now_fail_readably(call):
    """Found by the fuzz tests above: each used to fail deep inside (or not at all)."""
    _raises_readably(call)


def test_kept_indices_of_an_empty_batch_is_empty():
    assert kept_indices(torch.zeros(0, 2, 2, dtype=torch.bool), 0, 2, 2).shape[0] == 0


def test_fuzz_examples_are_reproducible():
    """derandomize=True: the examples do not depend on a seed or a database."""
    assert FUZZ.derandomize and FUZZ.deadline is None and FUZZ.database is None
