"""`mosic viz` (mosic.viz.command): tracks, label maps and curves rendered to files, checked by pixels."""

import json

import av
import numpy as np
import pytest
from conftest import TINY_VIT, tiny_config
from helpers.images import colour_count
from PIL import Image

from mosic.cli import main
from mosic.trackers import Tracks
from mosic.viz import plot_curves, point_colors, read_clip, track_clip, upscale

SPEC = "synthetic:num_videos=1,num_frames=8,size=64,seed=0"
TINY_ARGS = [a for k, v in {"pretrained": "false", **TINY_VIT}.items() for a in ("--backbone-arg", f"{k}={v}")]


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


def test_viz_clusters_kmeans(tmp_path):
    out = tmp_path / "clusters.png"
    args = ["viz", "clusters", SPEC, "--backbone", "vit-tiny", *TINY_ARGS, "--k", "4", "--num-frames", "4", "--stride", "2"]
    assert main([*args, "--scale", "1", "--alpha", "1.0", "--out", str(out)]) == 0
    sheet = np.asarray(Image.open(out).convert("RGB"))
    assert sheet.shape == (64, 4 * 64 + 3 * 2, 3)
    tiles = np.concatenate([sheet[:, i * 66 : i * 66 + 64] for i in range(4)])
    assert 2 <= colour_count(tiles) <= 4  # alpha 1: the cluster colours only, at most k of them
    assert colour_count(tiles[:8, :8]) == 1  # a 8 px patch is one cluster


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
    assert (image != 255).any(-1).mean() > 0.02 and colour_count(image) > 2
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
    assert colour_count(image) > 2
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
            assert 1 <= colour_count(np.asarray(gif.convert("RGB"))) <= 8
        assert sum(durations) == 4 * 100  # 4 frames at 10 fps
