"""Readers of DAVIS and YouTube-VOS (mosic.data.video_segmentation), on tiny fake datasets.

Each test writes a few 24x32 frames and label PNGs in the dataset's real layout under
tmp_path, then checks shapes, dtypes, exact mask values, names, the protocols, and that
wrong layouts give errors naming the expected layout.
"""

import json
import pickle

import numpy as np
import pytest

from helpers.segmentation import H, W, assert_image, label_map, write, write_jpg, write_png
from mosic.data import VideoSource
from mosic.data.image_segmentation import DatasetLayoutError
from mosic.data.segmentation import VideoSegmentationDataset
from mosic.data.video_segmentation import DAVIS, MissingAnnotationError, YouTubeVOS

# ----------------------------------------------------------------------------- DAVIS


DAVIS_VIDEOS = {"bear": 3, "dogs-jump": 2}


def davis_mask(video: str, k: int) -> np.ndarray:
    return label_map([0, 1, 2, 0] if video == "bear" else [0, 1 + k, 255, 2])


@pytest.fixture
def davis(tmp_path):
    base = tmp_path / "DAVIS"
    for v, (video, n) in enumerate(DAVIS_VIDEOS.items()):
        for k in range(n):
            write_jpg(base / "JPEGImages" / "480p" / video / f"{k:05d}.jpg", 10 * v + k)
            write_png(base / "Annotations" / "480p" / video / f"{k:05d}.png", davis_mask(video, k))
    write(base / "ImageSets" / "2017" / "val.txt", "bear\ndogs-jump\n")
    write(base / "ImageSets" / "2017" / "train.txt", "dogs-jump\n")
    write(base / "ImageSets" / "2016" / "val.txt", "dogs-jump\n")
    return tmp_path


def test_davis(davis):
    ds = DAVIS(davis / "DAVIS", "val")
    assert isinstance(ds, VideoSegmentationDataset) and isinstance(ds, VideoSource)
    assert len(ds) == 2 and [ds.video_name(i) for i in range(2)] == ["bear", "dogs-jump"]
    assert ds.num_frames(0) == 3 and ds.num_frames(1) == 2
    assert ds.fps(0) is None and ds.ground_truth(0) is None
    frames = ds.read_frames(0, [2, 0, 2])
    assert frames.shape == (3, H, W, 3) and frames.dtype == np.uint8
    for f, k in zip(frames, [2, 0, 2]):
        assert_image(f, k)
    assert_image(ds.read_frames(1, [1])[0], 11)
    masks = ds.read_masks(1, [1, 0])
    assert masks.shape == (2, H, W) and masks.dtype == np.int64
    np.testing.assert_array_equal(masks[0], davis_mask("dogs-jump", 1))  # 255 kept as void
    np.testing.assert_array_equal(masks[1], davis_mask("dogs-jump", 0))
    assert ds.annotated_frames(0) == [0, 1, 2]
    assert ds.object_ids(0) == [1, 2] and ds.object_ids(1) == [1, 2]
    assert ds.frame_name(0, 1) == "00001.jpg"
    assert [DAVIS(davis, "train").video_name(0)] == ["dogs-jump"]  # a parent of DAVIS/
    assert pickle.loads(pickle.dumps(ds)).read_masks(0, [0]).shape == (1, H, W)
    with pytest.raises(IndexError, match="frame index 3 is out of range"):
        ds.read_masks(0, [3])
    with pytest.raises(IndexError):
        ds.video_name(2)


def test_davis_2016_merges_objects(davis):
    ds = DAVIS(davis, "val", year=2016)
    assert ds.videos == ["dogs-jump"]
    np.testing.assert_array_equal(ds.read_masks(0, [1])[0], label_map([0, 1, 1, 1]))
    assert ds.object_ids(0) == [1]


def test_davis_missing_annotation_and_errors(davis, tmp_path):
    base = davis / "DAVIS"
    (base / "Annotations" / "480p" / "bear" / "00001.png").unlink()
    ds = DAVIS(davis)
    assert ds.annotated_frames(0) == [0, 2]
    with pytest.raises(MissingAnnotationError, match=r"frame 1 \(00001.jpg\) of video bear has no annotation"):
        ds.read_masks(0, [0, 1])

    with pytest.raises(DatasetLayoutError) as error:
        DAVIS(tmp_path / "elsewhere")
    message = str(error.value)
    assert "<root>/JPEGImages/<resolution>/<video>/00000.jpg" in message
    assert "<root>/ImageSets/<year>/{train,val}.txt" in message and "does not exist" in message
    with pytest.raises(DatasetLayoutError, match="Full-Resolution not found"):
        DAVIS(davis, resolution="Full-Resolution")
    with pytest.raises(DatasetLayoutError, match=r"(?s)ImageSets/2017/test-dev.txt not found.*found: .*train.txt, val.txt"):
        DAVIS(davis, "test-dev")
    write(base / "ImageSets" / "2017" / "val.txt", "bear\ncows\n")
    with pytest.raises(DatasetLayoutError, match=r"1 of the 2 videos listed by .*val.txt have no folder in .*480p: cows"):
        DAVIS(davis)


# ---------------------------------------------------------------------------- YouTube-VOS


YT_MASKS = {  # (split, video, frame stem) -> mask
    ("valid", "0a49f5265b", "00000"): label_map([0, 1, 0, 0]),
    ("valid", "0a49f5265b", "00010"): label_map([0, 1, 2, 0]),  # object 2 first appears at frame 2
    ("valid", "3e03f623bb", "00000"): label_map([0, 0, 1, 1]),
    **{("train", "003234408d", f"{5 * k:05d}"): label_map([0, 1 + k % 2, 2, 0]) for k in range(3)},
}


@pytest.fixture
def ytvos(tmp_path):
    for split, video, count in (("valid", "0a49f5265b", 3), ("valid", "3e03f623bb", 2), ("train", "003234408d", 3)):
        for k in range(count):
            write_jpg(tmp_path / split / "JPEGImages" / video / f"{5 * k:05d}.jpg", k)
    for (split, video, stem), mask in YT_MASKS.items():
        write_png(tmp_path / split / "Annotations" / video / f"{stem}.png", mask)
    for k in range(11):  # 30 fps frames of train
        write_jpg(tmp_path / "train_all_frames" / "JPEGImages" / "003234408d" / f"{k:05d}.jpg", k)
    write(tmp_path / "valid" / "meta.json", json.dumps({"videos": {
        "0a49f5265b": {"objects": {"1": {"category": "penguin", "frames": ["00000", "00005", "00010"]},
                                   "2": {"category": "penguin", "frames": ["00010"]}}},
        "3e03f623bb": {"objects": {"1": {"category": "hand", "frames": ["00000", "00005"]}}},
    }}))
    return tmp_path


def test_ytvos_valid(ytvos):
    ds = YouTubeVOS(ytvos, "valid")
    assert isinstance(ds, VideoSegmentationDataset) and isinstance(ds, VideoSource)
    assert len(ds) == 2 and ds.videos == ["0a49f5265b", "3e03f623bb"]
    assert ds.num_frames(0) == 3 and ds.fps(0) is None and ds.ground_truth(0) is None
    frames = ds.read_frames(0, [0, 2])
    assert frames.shape == (2, H, W, 3) and frames.dtype == np.uint8
    assert_image(frames[0], 0) and assert_image(frames[1], 2)
    assert ds.annotated_frames(0) == [0, 2] and ds.annotated_frames(1) == [0]  # only frames with PNGs
    masks = ds.read_masks(0, [2, 0])
    assert masks.shape == (2, H, W) and masks.dtype == np.int64
    np.testing.assert_array_equal(masks[0], YT_MASKS["valid", "0a49f5265b", "00010"])
    np.testing.assert_array_equal(masks[1], YT_MASKS["valid", "0a49f5265b", "00000"])
    assert ds.object_ids(0) == [1]  # object 2 appears in a later annotated frame
    assert ds.objects(0) == {1: {"category": "penguin", "frames": ["00000", "00005", "00010"]},
                             2: {"category": "penguin", "frames": ["00010"]}}
    with pytest.raises(MissingAnnotationError, match=r"frame 1 \(00005.jpg\) of video 0a49f5265b has no annotation.*\[0, 2\]"):
        ds.read_masks(0, [1])


def test_ytvos_train_and_all_frames(ytvos):
    ds = YouTubeVOS(ytvos, "train")
    assert ds.num_frames(0) == 3 and ds.annotated_frames(0) == [0, 1, 2]
    np.testing.assert_array_equal(ds.read_masks(0, [1])[0], YT_MASKS["train", "003234408d", "00005"])
    full = YouTubeVOS(ytvos, "train", all_frames=True)
    assert full.num_frames(0) == 11 and full.annotated_frames(0) == [0, 5, 10]
    assert_image(full.read_frames(0, [7])[0], 7)
    np.testing.assert_array_equal(full.read_masks(0, [10])[0], YT_MASKS["train", "003234408d", "00010"])
    assert full.object_ids(0) == [1, 2]
    with pytest.raises(MissingAnnotationError, match=r"frame 3 \(00003.jpg\)"):
        full.read_masks(0, [0, 3])
    with pytest.raises(DatasetLayoutError, match="meta.json not found"):
        ds.objects(0)


def test_ytvos_errors(ytvos, tmp_path):
    with pytest.raises(DatasetLayoutError) as error:
        YouTubeVOS(tmp_path / "valid")  # the split folder instead of its parent
    message = str(error.value)
    assert "<root>/<split>/JPEGImages/<video>/<frame>.jpg" in message and "<root>/<split>/meta.json" in message
    assert "holds Annotations/, JPEGImages/, meta.json" in message
    with pytest.raises(DatasetLayoutError, match=r"valid_all_frames/JPEGImages not found"):
        YouTubeVOS(ytvos, "valid", all_frames=True)
    (ytvos / "valid" / "Annotations" / "3e03f623bb" / "00000.png").rename(ytvos / "stray.png")
    (ytvos / "valid" / "Annotations" / "3e03f623bb").rmdir()
    with pytest.raises(DatasetLayoutError, match=r"1 of the 2 videos .* no folder in .*Annotations: 3e03f623bb"):
        YouTubeVOS(ytvos, "valid")
