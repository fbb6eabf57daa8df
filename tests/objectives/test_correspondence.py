import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

import mosic
from mosic.data.transforms import ViewTransform, warp_tokens
from mosic.objectives import OBJECTIVES, CorrespondenceObjective, ObjectiveInputs
from mosic.trackers import Tracks

P = 4  # patch size


def identity_objective(dim, **kwargs):
    """Identity projection head: the head only L2-normalises, so affinities are cosines."""
    obj = CorrespondenceObjective(embed_dim=dim, projection_dim=dim, head_hidden_dims=(), **kwargs)
    with torch.no_grad():
        obj.head.mlp[0].weight.copy_(torch.eye(dim))
        obj.head.mlp[0].bias.zero_()
    return obj


def make_inputs(teacher_tokens, student_view_tokens, views):
    b, t, h, w, _ = teacher_tokens.shape
    xy = torch.zeros(b, t, 1, 2)
    return ObjectiveInputs(
        student_tokens=teacher_tokens.new_zeros(b, 0, h, w, teacher_tokens.shape[-1]),
        teacher_tokens=teacher_tokens,
        tracks=Tracks(xy, torch.ones(b, t, 1, dtype=torch.bool)),
        patch_size=P,
        student_frames=(),
        views=views,
        student_view_tokens=student_view_tokens,
    )


def expected_terms(teacher_tokens, student, views, temperature, long_frame):
    """Eqs. 12 and 15 written out: per-patch -log softmax, averaged over clips and patches."""

    def norm(x):
        return F.normalize(x.flatten(1, 2), dim=-1)

    s = norm(student)  # (B, N, D): x'_0
    x1 = norm(warp_tokens(teacher_tokens[:, 1], views, P))  # Phi(E(I_1))
    n = s.shape[1]
    short_lp = torch.log_softmax(torch.einsum("bkd,bld->bkl", x1, s) / temperature, dim=-1)
    short = -short_lp.diagonal(dim1=1, dim2=2).mean()
    short_acc = (short_lp.argmax(-1) == torch.arange(n)).float().mean()
    if long_frame is None:
        return short, None, short_acc, None
    anchor = norm(warp_tokens(teacher_tokens[:, 0], views, P))  # Phi(E(I_0))
    keys = norm(teacher_tokens[:, long_frame])  # E(I_t')
    labels = torch.einsum("bkd,bld->bkl", anchor, keys).argmax(-1)  # o_k
    long_lp = torch.log_softmax(torch.einsum("bkd,bld->bkl", s, keys) / temperature, dim=-1)
    long = -long_lp.gather(-1, labels[..., None]).mean()
    long_acc = (long_lp.argmax(-1) == labels).float().mean()
    return short, long, short_acc, long_acc


def crop_flip_views(b, h, w):
    return [ViewTransform(1, 2, 3 * w * P // 4, 3 * h * P // 4, (h * P, w * P), flip=i % 2 == 0) for i in range(b)]


@pytest.mark.parametrize("temperature", [0.1, 1.0])
@pytest.mark.parametrize("view_kind", ["identity", "crop-flip"])
def test_short_and_long_terms_match_a_direct_computation(temperature, view_kind):
    torch.manual_seed(0)
    b, t, h, w, d = 2, 6, 2, 3, 4
    teacher_tokens = torch.randn(b, t, h, w, d)
    student = torch.randn(b, h, w, d)
    views = [ViewTransform.identity(h * P, w * P)] * b if view_kind == "identity" else crop_flip_views(b, h, w)
    inputs = make_inputs(teacher_tokens, student, views)
    short, long, short_acc, long_acc = expected_terms(teacher_tokens, student, views, temperature, long_frame=t - 1)

    only_short = identity_objective(d, temperature=temperature, short_weight=1.0, long_weight=0.0)
    assert float(only_short(inputs, teacher=only_short).loss.detach()) == pytest.approx(float(short), abs=1e-5)
    only_long = identity_objective(d, temperature=temperature, short_weight=0.0, long_weight=1.0)
    assert float(only_long(inputs, teacher=only_long).loss.detach()) == pytest.approx(float(long), abs=1e-5)

    obj = identity_objective(d, temperature=temperature)  # the paper's lambda1 = 0.1, lambda2 = 0.5
    out = obj(inputs, teacher=obj)
    assert float(out.loss.detach()) == pytest.approx(float(0.1 * short + 0.5 * long), abs=1e-5)
    assert float(out.metrics["loss"]) == pytest.approx(float(out.loss.detach()), abs=1e-6)
    assert float(out.metrics["short_term"]) == pytest.approx(float(short), abs=1e-5)
    assert float(out.metrics["long_term"]) == pytest.approx(float(long), abs=1e-5)
    assert float(out.metrics["short_term_accuracy"]) == pytest.approx(float(short_acc))
    assert float(out.metrics["long_term_accuracy"]) == pytest.approx(float(long_acc))
    assert all(not m.requires_grad for m in out.metrics.values())


def test_long_term_pairs_frame_zero_with_the_last_frame():
    torch.manual_seed(1)
    b, t, h, w, d = 1, 7, 2, 2, 4
    teacher_tokens = torch.randn(b, t, h, w, d)
    student = torch.randn(b, h, w, d)
    views = [ViewTransform.identity(h * P, w * P)]
    obj = identity_objective(d, short_weight=0.0, long_weight=1.0, long_term_gap=5)
    assert obj.long_term_frame(t) == t - 1 and obj.long_term_frame(6) == 5 and obj.long_term_frame(5) is None
    before = obj(make_inputs(teacher_tokens, student, views), teacher=obj).loss
    changed = teacher_tokens.clone()
    changed[:, 2:t - 1] = torch.randn_like(changed[:, 2:t - 1])  # frames other than 0, 1, T-1: no effect
    assert torch.equal(obj(make_inputs(changed, student, views), teacher=obj).loss, before)
    changed[:, t - 1] = torch.randn_like(changed[:, t - 1])
    assert not torch.allclose(obj(make_inputs(changed, student, views), teacher=obj).loss, before)


def test_clips_shorter_than_the_gap_skip_the_long_term_with_one_warning():
    torch.manual_seed(2)
    b, t, h, w, d = 2, 3, 2, 2, 4
    teacher_tokens, student = torch.randn(b, t, h, w, d), torch.randn(b, h, w, d)
    views = [ViewTransform.identity(h * P, w * P)] * b
    obj = identity_objective(d, long_term_gap=5)
    with pytest.warns(UserWarning, match="long_term_gap"):
        out = obj(make_inputs(teacher_tokens, student, views), teacher=obj)
    short, _, _, _ = expected_terms(teacher_tokens, student, views, 0.1, long_frame=None)
    assert float(out.loss.detach()) == pytest.approx(0.1 * float(short), abs=1e-5)
    assert float(out.metrics["long_term"]) == 0.0 and float(out.metrics["long_term_accuracy"]) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        obj(make_inputs(teacher_tokens, student, views), teacher=obj)  # warned once only
    short_gap = identity_objective(d, long_term_gap=2)
    out = short_gap(make_inputs(teacher_tokens, student, views), teacher=short_gap)
    assert float(out.metrics["long_term"]) > 0


# ---- the minimum: an encoder that is equivariant and consistent over time ----------------


def simplex_tokens(b, h, w):
    """(B, h, w, N) distinct unit features, one per patch (N = h * w), pairwise cosine
    -1/(N-1): the centred one-hot vectors (a regular simplex)."""
    n = h * w
    vertices = F.normalize(torch.eye(n) - 1.0 / n, dim=-1)
    return vertices.view(1, h, w, n).expand(b, h, w, n).clone()


def analytic_minimum(n, temperature, short_weight=0.1, long_weight=0.5):
    """Each term: positive cosine 1 against N-1 negatives at -1/(N-1)."""
    per_patch = math.log1p((n - 1) * math.exp(-n / ((n - 1) * temperature)))
    return (short_weight + long_weight) * per_patch


def static_video(frame, t=6):
    return frame.unsqueeze(1).expand(-1, t, -1, -1, -1).clone()


def loss_of(obj, teacher_tokens, student, views):
    return float(obj(make_inputs(teacher_tokens, student, views), teacher=obj).loss.detach())


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_the_equivariant_identity_mapping_minimises_the_losses(temperature):
    b, h, w = 2, 2, 3
    n = h * w
    frame = simplex_tokens(b, h, w)
    teacher_tokens = static_video(frame)
    views = [ViewTransform.identity(h * P, w * P)] * b
    obj = identity_objective(n, temperature=temperature)
    equivariant = warp_tokens(frame, views, P).requires_grad_(True)
    out = obj(make_inputs(teacher_tokens, equivariant, views), teacher=obj)
    minimum = analytic_minimum(n, temperature)
    assert float(out.loss.detach()) == pytest.approx(minimum, abs=1e-5)
    assert float(out.metrics["short_term_accuracy"]) == 1.0 and float(out.metrics["long_term_accuracy"]) == 1.0

    # a stationary point with respect to the student tokens ...
    out.loss.backward()
    assert float(equivariant.grad.abs().max()) < 1e-5

    # ... and below every perturbed or shuffled student
    generator = torch.Generator().manual_seed(0)
    student = equivariant.detach()
    for scale in (0.03, 0.1, 0.3, 1.0):
        for _ in range(5):
            noisy = student + scale * torch.randn(student.shape, generator=generator)
            assert loss_of(obj, teacher_tokens, noisy, views) > minimum + 1e-6
    for _ in range(10):
        perm = torch.randperm(n, generator=generator)
        if torch.equal(perm, torch.arange(n)):
            continue
        shuffled = student.flatten(1, 2)[:, perm].view_as(student)
        assert loss_of(obj, teacher_tokens, shuffled, views) > minimum + 1e-3


def test_one_hot_teacher_features_are_not_a_minimum_of_the_student():
    """Why the test above uses simplex features: with one-hot teacher features the student
    lowers the loss by also pushing each token away from the others (negative cosines),
    so the one-hot student is beaten by the centred simplex."""
    b, h, w = 1, 2, 3
    n = h * w
    one_hot = torch.eye(n).view(1, h, w, n)
    views = [ViewTransform.identity(h * P, w * P)]
    obj = identity_objective(n)
    teacher_tokens = static_video(one_hot)
    assert loss_of(obj, teacher_tokens, simplex_tokens(b, h, w), views) < loss_of(obj, teacher_tokens, one_hot, views)


def test_equivariance_under_a_flip_is_what_is_rewarded():
    b, h, w = 2, 2, 4  # even width: the flip maps patch centres onto patch centres
    n = h * w
    frame = simplex_tokens(b, h, w)
    teacher_tokens = static_video(frame)
    flip = [ViewTransform(0, 0, w * P, h * P, (h * P, w * P), flip=True)] * b
    obj = identity_objective(n)
    minimum = analytic_minimum(n, 0.1)

    equivariant = frame.flip(2)  # E(Phi(I)) = Phi(E(I)): tokens of the flipped image are flipped
    assert torch.allclose(warp_tokens(frame, flip, P), equivariant, atol=1e-6)
    out = obj(make_inputs(teacher_tokens, equivariant, flip), teacher=obj)
    assert float(out.loss.detach()) == pytest.approx(minimum, abs=1e-5)
    assert float(out.metrics["long_term_accuracy"]) == 1.0

    invariant = frame  # ignores the flip: the same tokens as the unflipped image
    out = obj(make_inputs(teacher_tokens, invariant, flip), teacher=obj)
    assert float(out.loss.detach()) > minimum + 1.0
    assert float(out.metrics["short_term_accuracy"]) == 0.0


def test_gradients_reach_only_the_student():
    torch.manual_seed(3)
    b, t, h, w, d = 2, 6, 2, 2, 8
    student = CorrespondenceObjective(embed_dim=d, projection_dim=4, head_hidden_dims=(16,))
    teacher = CorrespondenceObjective(embed_dim=d, projection_dim=4, head_hidden_dims=(16,))
    teacher.load_state_dict(student.state_dict())
    teacher_tokens = torch.randn(b, t, h, w, d, requires_grad=True)
    view_tokens = torch.randn(b, h, w, d, requires_grad=True)
    views = crop_flip_views(b, h, w)
    out = student(make_inputs(teacher_tokens, view_tokens, views), teacher=teacher)
    out.loss.backward()
    assert view_tokens.grad is not None and float(view_tokens.grad.abs().sum()) > 0
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert teacher_tokens.grad is None


def test_views_are_seeded_per_clip():
    obj = CorrespondenceObjective(embed_dim=8, projection_dim=4, head_hidden_dims=())
    seeds = list(range(200))
    views = obj.sample_views(seeds, 64, 48)
    assert views == obj.sample_views(seeds, 64, 48)
    assert len(set(views)) > 150
    assert all(v.out_size == (64, 48) for v in views)
    assert all(0.5 * 64 * 48 * 0.9 <= v.width * v.height <= 64 * 48 for v in views)
    assert 60 < sum(v.flip for v in views) < 140
    assert not any(v.flip for v in CorrespondenceObjective(8, view_flip_probability=0.0).sample_views(seeds, 64, 48))


def test_registered_with_its_interface():
    obj = OBJECTIVES.create("correspondence", embed_dim=8, projection_dim=4, head_hidden_dims=[16])
    assert isinstance(obj, CorrespondenceObjective)
    assert obj.student_view and not obj.uses_tracks and obj.student_frames == ()


def test_bad_arguments_and_inputs_fail_fast():
    for kwargs, name in [
        ({"temperature": 0.0}, "temperature"),
        ({"short_weight": -1.0}, "short_weight"),
        ({"long_weight": -0.1}, "long_weight"),
        ({"short_weight": 0.0, "long_weight": 0.0}, "short_weight and long_weight"),
        ({"long_term_gap": 0}, "long_term_gap"),
        ({"view_scale": (0.0, 1.0)}, "view_scale"),
        ({"view_scale": (0.8, 0.5)}, "view_scale"),
        ({"view_flip_probability": 1.5}, "view_flip_probability"),
        ({"projection_dim": 0}, "projection_dim"),
        ({"head_hidden_dims": (16, 0)}, "head_hidden_dims"),
    ]:
        with pytest.raises(ValueError, match=name):
            CorrespondenceObjective(embed_dim=8, **kwargs)
    obj = identity_objective(4)
    views = [ViewTransform.identity(2 * P, 2 * P)]
    with pytest.raises(ValueError, match="at least 2 frames"):
        obj(make_inputs(torch.randn(1, 1, 2, 2, 4), torch.randn(1, 2, 2, 4), views), teacher=obj)
    with pytest.raises(ValueError, match="student_view_tokens"):
        obj(make_inputs(torch.randn(1, 3, 2, 2, 4), None, views), teacher=obj)
    with pytest.raises(ValueError, match="views"):
        obj(make_inputs(torch.randn(1, 3, 2, 2, 4), torch.randn(1, 2, 2, 4), None), teacher=obj)


# ---- end to end ---------------------------------------------------------------------------


def tiny_trainer():
    config = tiny_config(
        **{
            "data.num_frames": 8,
            "data.frame_stride": 1,
            "objective.kwargs": {"long_term_gap": 5},
            "train.max_steps": 2,
        }
    )
    return mosic.PostPretrainer(backbone="vit-tiny", objective="correspondence", pretrained=False, config=config)


def test_trains_end_to_end_on_the_view_only_without_a_tracker():
    def videos():
        return mosic.data.SyntheticVideos(num_videos=4, num_frames=8, size=32, seed=0)

    trainer = tiny_trainer()
    calls = {"student": [], "teacher": []}
    for role, learner in (("student", trainer.learner), ("teacher", trainer.teacher_learner)):
        original = learner.backbone.patch_tokens

        def counting(images, token_mask=None, role=role, original=original):
            calls[role].append(tuple(images.shape))
            return original(images, token_mask)

        learner.backbone.patch_tokens = counting
    trainer.fit(videos())
    assert trainer.step == 2 and trainer._tracker is None
    assert calls["student"] == [(4, 3, 32, 32)] * 2  # one view per clip, no plain frames
    assert calls["teacher"] == [(32, 3, 32, 32)] * 2  # 4 clips x 8 frames
    losses = [r["loss"] for r in trainer.history]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert all(r["long_term"] > 0 for r in trainer.history)

    again = tiny_trainer().fit(videos())
    assert [r["loss"] for r in again.history] == losses
