"""Video file / frame folder sources and open_videos, on tiny videos written with PyAV.

Frame k of every test video is a solid colour ``colour(k)``, so reading frame k can be
checked to really return frame k (with a tolerance for YUV round trips and lossy codecs).
"""

import fractions
import multiprocessing
import pickle
import sys

import av
import numpy as np
import pytest
import torch
from PIL import Image

from mosic.data.decoders import available_backends
from mosic.data.source import VideoSource
from mosic.data.video_files import ConcatSource, FrameFolderSource, VideoFileSource, open_videos
from mosic.errors import VideoReadError

pytestmark = pytest.mark.filterwarnings("ignore::mosic.data.decoders.InexactDecoderWarning")
USABLE = available_backends()
HAS_DECORD = "decord" in USABLE
HAS_TORCHCODEC = "torchcodec" in USABLE

BACKENDS = [
    "pyav",
    pytest.param("torchcodec", marks=pytest.mark.skipif(not HAS_TORCHCODEC, reason="torchcodec or FFmpeg's libraries missing")),
    pytest.param("decord", marks=pytest.mark.skipif(not HAS_DECORD, reason="decord is not installed")),
]
N, W, H, FPS = 20, 64, 48, 10
TOL = 12  # max abs pixel error of a decoded solid colour (lossy codecs)


def colour(k: int, gray: bool = False) -> np.ndarray:
    """(3,) uint8 RGB colour of frame k, k < 20 (luma and chroma change per frame)."""
    v = 10 + 11 * k
    return np.array((v, v, v) if gray else (v, 40 + 8 * k, 200 - 7 * k), np.uint8)


def frame_image(k: int, gray: bool = False) -> np.ndarray:
    return np.broadcast_to(colour(k, gray), (H, W, 3)).copy()


def assert_frames(frames: np.ndarray, ks, gray: bool = False) -> None:
    """``frames`` (T, H, W, 3) are frames ``ks``: each is closest to its own colour, and close."""
    ks = list(ks)
    assert frames.shape == (len(ks), H, W, 3) and frames.dtype == np.uint8
    palette = np.stack([colour(k, gray) for k in range(N)]).astype(float)  # (N, 3)
    means = frames.reshape(len(ks), -1, 3).mean(axis=1)  # (T, 3)
    nearest = np.linalg.norm(means[:, None] - palette[None], axis=-1).argmin(axis=1)
    assert nearest.tolist() == ks
    err = np.abs(frames.astype(int) - palette[ks][:, None, None].astype(int)).max(axis=(1, 2, 3))
    assert (err <= TOL).all(), f"frames {ks} off by {err.tolist()}"


def write_video(path, codec, n=N, pix_fmt="yuv420p", options=None, gray=False, pts_steps=None, fmt=None):
    """Write n solid-colour frames; ``pts_steps`` (ms) makes the frame rate variable."""
    container = av.open(str(path), "w", format=fmt)
    stream = container.add_stream(codec, rate=FPS)
    stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
    stream.options = options or {}
    if pts_steps:
        stream.time_base = stream.codec_context.time_base = fractions.Fraction(1, 1000)
    t = 0
    for k in range(n):
        frame = av.VideoFrame.from_ndarray(frame_image(k, gray), format="rgb24")
        if pts_steps:
            frame.pts, frame.time_base = t, fractions.Fraction(1, 1000)
            t += pts_steps[k % len(pts_steps)]
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


X264 = {"crf": "0", "x264-params": "keyint=6:min-keyint=6:scenecut=0"}
X264_BFRAMES = {"crf": "4", "x264-params": "keyint=6:min-keyint=6:scenecut=0:bframes=2:b-adapt=0"}
FORMATS = {  # name: (file name, codec, options, pix_fmt, gray)
    "mp4-h264": ("h264.mp4", "libx264", X264, "yuv420p", False),
    "mp4-h264-bframes": ("bframes.mp4", "libx264", X264_BFRAMES, "yuv420p", False),
    "avi-mpeg4": ("mpeg4.avi", "mpeg4", {"qscale": "1", "qmin": "1", "g": "6"}, "yuv420p", False),
    # AVI stores no presentation timestamps: with B-frames PyAV falls back to sequential reads
    "avi-h264-bframes": ("bframes.avi", "libx264", X264_BFRAMES, "yuv420p", False),
    "mkv-ffv1": ("ffv1.mkv", "ffv1", {"g": "6"}, "yuv420p", False),
    "mkv-ffv1-gray": ("gray.mkv", "ffv1", {}, "gray", True),
    "mov-h264": ("h264.mov", "libx264", X264, "yuv420p", False),
    "webm-vp8": ("vp8.webm", "libvpx", {"crf": "4", "b": "0", "g": "6"}, "yuv420p", False),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """{format name: path} of N-frame test videos, plus a 'vfr' and a 'raw' one."""
    root = tmp_path_factory.mktemp("videos")
    out = {
        name: write_video(root / file, codec, pix_fmt=pix, options=opts, gray=gray)
        for name, (file, codec, opts, pix, gray) in FORMATS.items()
    }
    out["vfr"] = write_video(root / "vfr.mkv", "ffv1", options={"g": "5"}, pts_steps=[40, 10, 200, 33])
    out["raw"] = write_video(root / "raw.h264", "libx264", options=X264, fmt="h264")
    return out


def write_frames(folder, n=N, ext="jpg", names=None):
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        name = names[k] if names else f"{5 * k:05d}.{ext}"
        Image.fromarray(frame_image(k)).save(folder / name, quality=98)
    return folder


# ----------------------------------------------------------------------------- video files


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_reads_every_frame_in_order(videos, fmt, backend):
    source = VideoFileSource([videos[fmt]], backend=backend)
    assert isinstance(source, VideoSource) and len(source) == 1
    assert source.video_name(0) == str(videos[fmt])
    assert source.num_frames(0) == N
    assert source.fps(0) == pytest.approx(FPS)
    assert source.ground_truth(0) is None
    assert_frames(source.read_frames(0, range(N)), range(N), gray=FORMATS[fmt][4])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", ["mp4-h264-bframes", "avi-mpeg4", "avi-h264-bframes", "mkv-ffv1", "webm-vp8"])
def test_unsorted_and_repeated_indices(videos, fmt, backend):
    if backend == "decord" and fmt == "avi-h264-bframes":
        pytest.xfail("decord 0.6 returns wrong frames on random access into AVI files with B-frames")
    source = VideoFileSource([videos[fmt]], backend=backend)
    ks = [17, 2, 9, 9, 19, 0, 2, 13, 12]
    assert_frames(source.read_frames(0, ks), ks)
    assert_frames(source.read_frames(0, np.array([19])), [19])
    assert_frames(source.read_frames(0, [7, 8, 9, 10]), [7, 8, 9, 10])


@pytest.mark.parametrize("backend", BACKENDS)
def test_variable_frame_rate_is_indexed_by_frame_not_time(videos, backend):
    source = VideoFileSource([videos["vfr"]], backend=backend)
    assert source.num_frames(0) == N
    ks = [15, 3, 4, 11, 19, 0]
    assert_frames(source.read_frames(0, ks), ks)


def test_pyav_seeks_only_where_timestamps_are_trustworthy(videos):
    ks = [17, 2, 9, 19, 0, 13, 12]
    for fmt, seeks in [("mp4-h264-bframes", True), ("mkv-ffv1", True), ("webm-vp8", True), ("vfr", True),
                       ("avi-h264-bframes", False), ("raw", False)]:
        source = VideoFileSource([videos[fmt]], backend="pyav")
        assert source.num_frames(0) == N
        assert_frames(source.read_frames(0, ks), ks)
        assert (str(videos[fmt]) not in source.backend._sequential) == seeks, fmt


@pytest.mark.parametrize("other", BACKENDS[1:])
@pytest.mark.parametrize("fmt", list(FORMATS) + ["vfr"])
def test_backends_agree(videos, fmt, other):
    if other == "decord" and fmt == "avi-h264-bframes":
        pytest.xfail("decord 0.6 returns wrong frames on random access into AVI files with B-frames")
    ks = [4, 0, 13, 19, 7]
    by_pyav = VideoFileSource([videos[fmt]], backend="pyav").read_frames(0, ks)
    by_other = VideoFileSource([videos[fmt]], backend=other).read_frames(0, ks)
    assert np.abs(by_pyav.astype(int) - by_other.astype(int)).max() <= 3


def test_auto_backend_is_exact_and_never_decord(videos, monkeypatch):
    assert VideoFileSource([videos["mp4-h264"]]).backend.name == "pyav"
    monkeypatch.setitem(sys.modules, "torchcodec", None)  # torchcodec missing (or its FFmpeg libraries)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    with pytest.raises(ImportError, match="backend='pyav'"):
        VideoFileSource([videos["mp4-h264"]], backend="torchcodec")
    monkeypatch.setitem(sys.modules, "decord", None)  # as on macOS arm64: import decord fails
    with pytest.raises(ImportError, match="backend='pyav'"):
        VideoFileSource([videos["mp4-h264"]], backend="decord")


class _Clips(torch.utils.data.Dataset):
    """Reads frames (k, k + 3) of every video of a source."""

    def __init__(self, source):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        return self.source.read_frames(i, [i, i + 3])


@pytest.mark.parametrize("backend", BACKENDS)
def test_source_pickles_after_reading_and_reads_in_workers(videos, backend):
    source = VideoFileSource([videos["mp4-h264-bframes"], videos["mkv-ffv1"], videos["vfr"]], backend=backend)
    for i in range(len(source)):
        assert_frames(source.read_frames(i, [i, i + 3]), [i, i + 3])
    clone = pickle.loads(pickle.dumps(source))
    assert [clone.num_frames(i) for i in range(3)] == [N] * 3
    assert_frames(clone.read_frames(2, [5, 1]), [5, 1])
    contexts = ["spawn"] + (["fork"] if "fork" in multiprocessing.get_all_start_methods() else [])
    for context in contexts:
        workers = 2 if context == "fork" else 1  # spawned workers re-import torch: slow
        loader = torch.utils.data.DataLoader(
            _Clips(source), batch_size=None, num_workers=workers, multiprocessing_context=context
        )
        for i, frames in enumerate(loader):
            assert_frames(frames.numpy(), [i, i + 3])


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_files_raise_video_read_error(videos, tmp_path, backend):
    rng = np.random.default_rng(0)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (tmp_path / "empty.avi").write_bytes(b"")
    (tmp_path / "text.mkv").write_text("not a video\n")
    data = videos["mp4-h264"].read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    scrambled = bytearray(videos["mkv-ffv1"].read_bytes())
    third = len(scrambled) // 3
    scrambled[third : 2 * third] = rng.integers(0, 256, third, dtype=np.uint8).tobytes()
    (tmp_path / "scrambled.mkv").write_bytes(bytes(scrambled))
    for name in ["garbage.mp4", "empty.avi", "text.mkv", "truncated.mp4", "scrambled.mkv"]:
        source = VideoFileSource([tmp_path / name], backend=backend)
        with pytest.raises(VideoReadError) as info:
            source.read_frames(0, range(source.num_frames(0)))
        assert name in str(info.value) and "corrupt" in str(info.value)
        assert info.value.path == str(tmp_path / name)
        assert pickle.loads(pickle.dumps(info.value)).path == info.value.path


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_range_frame_index(videos, backend):
    source = VideoFileSource([videos["mkv-ffv1"]], backend=backend)
    for bad in ([N], [0, N + 5], [-1]):
        with pytest.raises(IndexError, match=rf"ffv1\.mkv.*{N} frames"):
            source.read_frames(0, bad)
    with pytest.raises(ValueError):
        source.read_frames(0, [])
    with pytest.raises(TypeError):
        source.read_frames(0, [1.5])


def test_video_file_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        VideoFileSource([tmp_path / "missing.mp4"])
    with pytest.raises(ValueError, match="at least one"):
        VideoFileSource([])
    (tmp_path / "a.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown video backend"):
        VideoFileSource([tmp_path / "a.mp4"], backend="opencv")


# ----------------------------------------------------------------------------- frame folders


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_frame_folder_source(tmp_path, ext):
    folder = write_frames(tmp_path / "bear", ext=ext)
    (folder / ".DS_Store").write_bytes(b"junk")
    source = FrameFolderSource([folder])
    assert isinstance(source, VideoSource)
    assert source.video_name(0) == "bear" and source.num_frames(0) == N and source.fps(0) is None
    assert source.ground_truth(0) is None
    assert_frames(source.read_frames(0, [3, 0, 19, 3]), [3, 0, 19, 3])
    with pytest.raises(IndexError, match=f"bear.*{N} frames"):
        source.read_frames(0, [N])


def test_frame_folder_natural_order_and_grayscale(tmp_path):
    names = [f"frame{k}.png" for k in range(12)]  # lexicographic order would put frame10 before frame2
    folder = write_frames(tmp_path / "v", n=12, names=names)
    Image.fromarray(frame_image(4, gray=True)[..., 0]).save(folder / "frame4.png")  # an "L" mode frame
    frames = FrameFolderSource([folder]).read_frames(0, range(12))
    colour_frames = [k for k in range(12) if k != 4]
    assert_frames(frames[colour_frames], colour_frames)
    assert_frames(frames[[4]], [4], gray=True)


def test_frame_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        FrameFolderSource([tmp_path / "nope"])
    folder = write_frames(tmp_path / "v", n=3)
    (folder / "00005.jpg").write_bytes(b"broken")
    with pytest.raises(VideoReadError, match="00005.jpg"):
        FrameFolderSource([folder]).read_frames(0, [1])


# ----------------------------------------------------------------------------- open_videos


@pytest.mark.parametrize(
    "layout", ["", "JPEGImages", "JPEGImages/480p", "train/JPEGImages", "train_all_frames/JPEGImages"]
)
def test_open_videos_resolves_dataset_layouts(tmp_path, layout):
    frames_root = tmp_path / "data" / layout
    for name, n in [("car10", 4), ("car2", 5), ("bear", 6)]:
        write_frames(frames_root / name, n=n)
    (tmp_path / "data" / "Annotations").mkdir(exist_ok=True)
    source = open_videos(tmp_path / "data")
    assert isinstance(source, FrameFolderSource)
    assert [source.video_name(i) for i in range(3)] == ["bear", "car2", "car10"]
    assert [source.num_frames(i) for i in range(3)] == [6, 5, 4]
    assert_frames(source.read_frames(2, [3, 1]), [3, 1])


def test_open_videos_prefers_all_frames_and_480p(tmp_path):
    write_frames(tmp_path / "ytvos" / "train" / "JPEGImages" / "a", n=2)
    write_frames(tmp_path / "ytvos" / "train_all_frames" / "JPEGImages" / "a", n=7)
    assert open_videos(tmp_path / "ytvos").num_frames(0) == 7
    write_frames(tmp_path / "davis" / "JPEGImages" / "Full-Resolution" / "a", n=2)
    write_frames(tmp_path / "davis" / "JPEGImages" / "480p" / "a", n=3)
    assert open_videos(str(tmp_path / "davis")).num_frames(0) == 3


def test_open_videos_files_and_folders(videos, tmp_path):
    single = open_videos(videos["mkv-ffv1"], backend="pyav")
    assert isinstance(single, VideoFileSource) and len(single) == 1

    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ["v10.mkv", "v2.MKV", "v1.mkv"]:
        (folder / name).write_bytes(videos["mkv-ffv1"].read_bytes())
    (folder / "notes.txt").write_text("ignored")
    source = open_videos(folder, backend="pyav")
    assert isinstance(source, VideoFileSource)
    expected = [str(folder / name) for name in ["v1.mkv", "v2.MKV", "v10.mkv"]]
    assert [source.video_name(i) for i in range(3)] == expected
    assert_frames(source.read_frames(1, [6]), [6])

    frames = open_videos(write_frames(tmp_path / "one_video", n=5))
    assert isinstance(frames, FrameFolderSource) and len(frames) == 1 and frames.num_frames(0) == 5
    assert open_videos(source) is source


def test_open_videos_mixed_list(videos, tmp_path):
    dogs = write_frames(tmp_path / "dog", n=6)
    cats = write_frames(tmp_path / "cat", n=7)
    items = [videos["mp4-h264"], videos["mkv-ffv1"], dogs, cats, str(videos["vfr"])]
    source = open_videos(items, backend="pyav")
    assert isinstance(source, ConcatSource) and len(source) == 5
    assert [type(s) for s in source.sources] == [VideoFileSource, FrameFolderSource, VideoFileSource]
    assert [source.video_name(i) for i in range(5)] == [
        str(videos["mp4-h264"]), str(videos["mkv-ffv1"]), "dog", "cat", str(videos["vfr"])
    ]
    assert [source.num_frames(i) for i in range(5)] == [N, N, 6, 7, N]
    assert [source.fps(i) for i in range(5)] == [FPS, FPS, None, None, FPS]
    for i in range(5):
        assert_frames(source.read_frames(i, [5, 1]), [5, 1])
    assert source.video_name(-1) == str(videos["vfr"])
    with pytest.raises(IndexError, match="5 videos"):
        source.num_frames(5)
    clone = pickle.loads(pickle.dumps(source))
    assert_frames(clone.read_frames(3, [6]), [6])


def test_concat_source_forwards_ground_truth(tmp_path):
    class WithTruth(FrameFolderSource):
        def ground_truth(self, index):
            return ("truth", index)

    a = FrameFolderSource([write_frames(tmp_path / "a", n=2)])
    b = WithTruth([write_frames(tmp_path / "b", n=2), write_frames(tmp_path / "c", n=2)])
    source = open_videos([a, b])
    assert isinstance(source, ConcatSource)
    assert [source.ground_truth(i) for i in range(3)] == [None, ("truth", 0), ("truth", 1)]


def test_open_videos_errors(tmp_path, videos):
    with pytest.raises(FileNotFoundError, match="does not exist.*nowhere"):
        open_videos(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(ValueError, match="neither video files nor frame folders(?s:.*)JPEGImages"):
        open_videos(tmp_path / "empty")
    with pytest.raises(ValueError, match="empty list"):
        open_videos([])
    with pytest.raises(TypeError, match="int"):
        open_videos(3)
    with pytest.raises(TypeError, match="dict"):
        open_videos([videos["mkv-ffv1"], {}])
    with pytest.raises(ValueError, match="unknown video backend"):
        open_videos(videos["mkv-ffv1"], backend="cv2")
    image = write_frames(tmp_path / "f", n=1) / "00000.jpg"
    with pytest.raises(ValueError, match="single image"):
        open_videos(image)
    (tmp_path / "clip.xyz").write_bytes(videos["mkv-ffv1"].read_bytes())
    with pytest.raises(ValueError, match="extensions="):
        open_videos(tmp_path / "clip.xyz")
    assert open_videos(tmp_path / "clip.xyz", backend="pyav", extensions=["XYZ"]).num_frames(0) == N


def test_auto_reads_avi_with_b_frames_exactly(videos):
    source = VideoFileSource([videos["avi-h264-bframes"]], backend="auto")
    ks = [17, 2, 9, 9, 19, 0, 2, 13, 12]
    assert_frames(source.read_frames(0, ks), ks)
