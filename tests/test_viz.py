"""`mosic viz` and mosic.viz: tracks, label maps and curves rendered to files, checked by pixels."""

import json

import av
import numpy as np
import pytest
import torch
from conftest import TINY_VIT, tiny_config
from PIL import Image

from mosic.cli import main
from mosic.trackers import Tracks
from mosic.viz import contact_sheet, draw_tracks, overlay_labels, plot_curves, point_colors, read_clip, track_clip, upscale

SPEC = "synthetic:num_videos=1,num_frames=8,size=64,seed=0"
TINY_ARGS = [a for k, v in {"pretrained": "false", **TINY_VIT}.items() for a in ("--backbone-arg", f"{k}={v}")]


def _colours(image: np.ndarray) -> int:
    return len(np.unique(image.reshape(-1, 3), axis=0))


@pytest.fixture(scope="module")
def clip():
    """The synthetic clip the CLI renders, its oracle tracks and the raw frames at scale 2."""
    frames, meta = read_clip(SPEC, num_frames=8, stride=1)
    tracks = track_clip(frames, meta, "oracle", grid=4)
    return frames, tracks, upscale(frames, 2)


def _visible_points(tracks: Tracks, t: int, margin: float = 4.0):
    """(x, y) of frame-t points visible and at least ``margin`` px inside the 64 px frame, at scale 2."""
    xy, vis = tracks.xy[0, t].numpy(), tracks.visible[0, t].numpy()
    inside = vis & (xy >= margin).all(-1) & (xy <= 63 - margin).all(-1)
    return [(j, np.round((xy[j] + 0.5) * 2 - 0.5).astype(int)) for j in np.nonzero(inside)[0]]


def test_viz_tracks_png_contact_sheet(tmp_path, clip, capsys):
    frames, tracks, raw = clip
    out = tmp_path / "tracks.png"
    args = ["viz", "tracks", SPEC, "--tracker", "oracle", "--num-frames", "8", "--stride", "1", "--grid", "4"]
    assert main([*args, "--scale", "2", "--radius", "3", "--sheet", "4", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    sheet = np.asarray(Image.open(out).convert("RGB"))
    assert sheet.shape == (128, 4 * 128 + 3 * 2, 3)  # 4 tiles of 128 px (64 px at scale 2), 2 px apart
    colours = point_colors(tracks.xy[0, 0].numpy(), 64, 64)
    for tile, t in enumerate([0, 2, 5, 7]):  # 4 evenly spaced of 8 frames
        drawn = sheet[:, tile * 130 : tile * 130 + 128]
        assert (drawn != raw[t]).any(axis=-1).mean() > 0.02  # 16 markers (and trails) cover a visible part
        points = _visible_points(tracks, t)
        assert points, "the clip should have visible points inside the frame"
        for j, (x, y) in points:  # a visible point: a filled disc of its own colour at its position
            assert (drawn[y, x] == colours[j]).all(), (t, j)
    assert (sheet[:, 128:130] == 255).all()  # the white gap between tiles


def test_viz_tracks_gif_and_mp4(tmp_path, clip):
    frames, tracks, raw = clip
    args = ["viz", "tracks", SPEC, "--tracker", "oracle", "--num-frames", "8", "--stride", "1", "--grid", "4", "--scale", "2"]
    gif, mp4 = tmp_path / "tracks.gif", tmp_path / "tracks.mp4"
    assert main([*args, "--out", str(gif)]) == 0
    assert main([*args, "--out", str(mp4), "--fps", "10"]) == 0
    with Image.open(gif) as image:
        assert image.size == (128, 128) and image.n_frames == 8 and image.info.get("loop") == 0
        decoded = []
        for t in range(8):
            image.seek(t)
            decoded.append(np.asarray(image.convert("RGB")))
    with av.open(str(mp4)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name in ("h264", "libx264") and stream.codec_context.pix_fmt == "yuv420p"
        videos = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(videos) == 8 and videos[0].shape == (128, 128, 3)
    for name, frames_out in (("gif", decoded), ("mp4", videos)):
        for t in (0, 7):
            near = np.zeros((128, 128), dtype=bool)
            for _, (x, y) in _visible_points(tracks, t):
                near[max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3] = True
            diff = np.abs(frames_out[t].astype(int) - raw[t].astype(int)).sum(-1)
            # lossy formats: the markers still change the pixels around each point a lot
            assert diff[near].mean() > 60, (name, t, diff[near].mean(), diff[~near].mean())


def _grey(t=6, h=40, w=40):
    return np.full((t, h, w, 3), 128, dtype=np.uint8)


def test_draw_tracks_visible_occluded_and_trails():
    frames = _grey()
    t = len(frames)
    xy = np.zeros((t, 3, 2), dtype=np.float32)
    xy[:, 0] = np.stack([np.linspace(4, 34, t), np.full(t, 30)], -1)  # moves right, always visible
    xy[:, 1] = (20, 8)  # still; occluded in the last frame
    xy[:, 2] = (8, 8)  # still, always visible
    visible = np.ones((t, 3), dtype=bool)
    visible[-1, 1] = False
    colours = point_colors(xy[0], 40, 40)
    assert _colours(colours) == 3
    out = draw_tracks(frames, xy, visible, trail=4, point_radius=3)
    assert out.shape == frames.shape and out.dtype == np.uint8
    same = draw_tracks(frames, Tracks(torch.from_numpy(xy)[None], torch.from_numpy(visible)[None]), trail=4, point_radius=3)
    np.testing.assert_array_equal(out, same)
    last = out[-1]
    # visible points: filled with their colour (centre and next to it)
    for j, (x, y) in ((0, xy[-1, 0]), (2, xy[-1, 2])):
        x, y = int(round(x)), int(round(y))
        assert (last[y, x] == colours[j]).all() and (last[y, x + 1] == colours[j]).all()
    # the occluded point: hollow, a ring of its colour around an untouched centre
    assert (last[8, 20] == 128).all()
    assert (last[8, 23] == colours[1]).all() and (last[5, 20] == colours[1]).all()
    assert (out[-2][8, 20] == colours[1]).all()  # the frame before, visible: filled
    # trail: between the previous two positions of the moving point, not in frame 0
    for x0, x1 in zip(xy[-3:-1, 0, 0], xy[-2:, 0, 0]):
        mid = int(round((x0 + x1) / 2))
        if abs(mid - xy[-1, 0, 0]) > 4:  # clear of the marker
            assert (last[30, mid] != 128).any(), mid
            tint = last[30, mid].astype(int) - 128
            assert np.sign(tint).tolist() == np.sign(colours[0].astype(int) - 128).tolist()
    assert (out[0][30, 12:30] == 128).all()  # frame 0 has no history yet
    assert (draw_tracks(frames, xy, visible, trail=0, point_radius=3)[-1][30, 12:25] == 128).all()
    # scale: pixels grow, positions follow the pixel-centre convention
    big = draw_tracks(frames, xy, visible, point_radius=3, scale=2)
    assert big.shape == (t, 80, 80, 3)
    assert (big[-1][2 * 8 + 1 - 1, 2 * 8 + 1 - 1] == colours[2]).all()


def test_draw_tracks_rejects_bad_input():
    with pytest.raises(ValueError, match="frames"):
        draw_tracks(_grey(), np.zeros((5, 2, 2)))
    with pytest.raises(ValueError, match="visible"):
        draw_tracks(_grey(), np.zeros((6, 2, 2)), np.ones((6, 3), bool))
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\) uint8"):
        draw_tracks(np.zeros((6, 8, 8, 3), np.float32), np.zeros((6, 2, 2)))


@pytest.mark.parametrize("k", [1, 3, 7])
def test_overlay_labels_colour_count_follows_k(k):
    frames = _grey(2, 32, 32)
    labels = (np.arange(2 * 4 * 4).reshape(2, 4, 4) % k).astype(np.int64)  # patch-level, 8 px patches
    out = overlay_labels(frames, labels, alpha=0.5)
    assert out.shape == frames.shape
    assert _colours(out) == k
    assert _colours(out[0, :8, :8]) == 1 and _colours(out[0, :8, :16]) == min(k, 2)  # nearest upsampling
    assert (out != 128).any(-1).all()  # every label is tinted, 0 too
    ignored = labels.copy()
    ignored[0, 0, 0] = 255
    assert (overlay_labels(frames, ignored)[0, :8, :8] == 128).all()  # the ignore index stays uncoloured
    with pytest.raises(ValueError, match="labels"):
        overlay_labels(frames, labels[:1].repeat(3, 0))


def test_contact_sheet_layout():
    frames = np.stack([np.full((10, 12, 3), i * 20, np.uint8) for i in range(6)])
    assert contact_sheet(frames[:4]).shape == (10, 4 * 12 + 3 * 2, 3)
    sheet = contact_sheet(frames, columns=4, pad=1)
    assert sheet.shape == (2 * 10 + 1, 4 * 12 + 3, 3)
    assert (sheet[11:, 13:25] == 100).all()  # frame 5: row 1, column 1


def test_viz_clusters_kmeans(tmp_path):
    out = tmp_path / "clusters.png"
    args = ["viz", "clusters", SPEC, "--backbone", "vit-tiny", *TINY_ARGS, "--k", "4", "--num-frames", "4", "--stride", "2"]
    assert main([*args, "--scale", "1", "--alpha", "1.0", "--out", str(out)]) == 0
    sheet = np.asarray(Image.open(out).convert("RGB"))
    assert sheet.shape == (64, 4 * 64 + 3 * 2, 3)
    tiles = np.concatenate([sheet[:, i * 66 : i * 66 + 64] for i in range(4)])
    assert 2 <= _colours(tiles) <= 4  # alpha 1: the cluster colours only, at most k of them
    assert _colours(tiles[:8, :8]) == 1  # a 8 px patch is one cluster


def test_viz_curves_from_a_metrics_file(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rng = np.random.default_rng(0)
    with open(metrics, "w") as f:
        for step in range(1, 61):
            f.write(json.dumps({"step": step, "loss": 4.0 / step**0.3 + 0.05 * rng.random(),
                                "agreement": 1 - 1 / step**0.2, "grad_norm": 1.0 + rng.random(),
                                "lr_backbone": 1e-4 * min(1.0, step / 10)}) + "\n")
        f.write('{"step": 61, "loss"')  # a run killed mid-write
    out = tmp_path / "curves.png"
    with pytest.warns(UserWarning, match="skipped 1 line"):
        assert main(["viz", "curves", str(metrics), "--out", str(out), "--size", "600x400", "--keys", "loss,agreement"]) == 0
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape == (400, 600, 3)
    assert (image != 255).any(-1).mean() > 0.02 and _colours(image) > 2
    blue = (image[..., 2].astype(int) - image[..., 0] > 60).sum()  # the tab:blue curves
    assert blue > 200
    with pytest.warns(UserWarning):
        assert main(["viz", "curves", str(metrics), "--out", str(out), "--keys", "los"]) == 2  # unknown metric: a message


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from mosic import PostPretrainer
    from mosic.data import SyntheticVideos

    run = tmp_path_factory.mktemp("viz") / "run"
    PostPretrainer(config=tiny_config(**{"train.max_steps": 3})).fit(
        SyntheticVideos(num_videos=4, num_frames=8, size=32, seed=0), out_dir=run
    )
    return run


def test_viz_curves_and_prototypes_of_a_training_run(tiny_run, tmp_path):
    out = tmp_path / "curves.png"
    assert main(["viz", "curves", str(tiny_run), "--out", str(out)]) == 0
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape == (60 + 4 * 220, 900, 3)  # loss, agreement, grad_norm, lr_backbone
    assert _colours(image) > 2
    path = plot_curves(tiny_run / "metrics.jsonl", tmp_path / "all.png", keys=None, size=(500, 900))
    assert Image.open(path).size == (500, 900)
    # the run's own clusters: each patch's best prototype (8 prototypes), over the teacher
    clusters = tmp_path / "prototypes.gif"
    spec = "synthetic:num_videos=1,num_frames=8,size=32"
    assert main(["viz", "clusters", spec, "--backbone", str(tiny_run), "--prototypes", "--num-frames", "4",
                 "--alpha", "1", "--fps", "10", "--out", str(clusters)]) == 0
    with Image.open(clusters) as gif:
        assert gif.size == (256, 256)  # 32 px at scale 8 (up to the 256 px default)
        durations = []
        for i in range(gif.n_frames):  # identical consecutive frames are merged, their durations add up
            gif.seek(i)
            durations.append(gif.info["duration"])
            assert 1 <= _colours(np.asarray(gif.convert("RGB"))) <= 8
        assert sum(durations) == 4 * 100  # 4 frames at 10 fps
