"""Readers for the video object segmentation datasets DAVIS and YouTube-VOS, in their published layouts.

Both are :class:`~mosic.data.segmentation.VideoSegmentationDataset` s and
:class:`~mosic.data.VideoSource` s: frames come from the ``JPEGImages`` folders (natural
filename order; frame index k is the k-th file), masks from the ``Annotations`` palette PNGs
of the same stem, as (T, H, W) int64 instance ids: 0 background, i >= 1 object i, 255
(:data:`~mosic.data.segmentation.IGNORE_INDEX`) void where a dataset marks it.

Not every frame needs a mask: ``annotated_frames(index)`` lists those with one (all frames
for DAVIS train/val, every frame of YouTube-VOS train's 6 fps ``JPEGImages`` or every 5th
of ``train_all_frames``, only each object's first frame on YouTube-VOS valid), and
``read_masks`` on any other frame raises :class:`MissingAnnotationError` naming it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .image_segmentation import DatasetLayoutError, _describe, read_label_png
from .segmentation import IGNORE_INDEX
from .video_files import FrameFolderSource, check_indices, image_files, natural_key

__all__ = ["DAVIS", "MissingAnnotationError", "YouTubeVOS"]


class MissingAnnotationError(KeyError):
    """A mask was requested for a frame that has no annotation PNG."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class _FrameMaskVideos:
    """Videos as frame folders plus annotation folders, masks paired with frames by file stem."""

    root: Path
    split: str
    videos: list[str]
    _frame_dirs: list[Path]
    _mask_dirs: list[Path]
    _merge_objects: bool = False

    def _setup(self, videos: list[str], frame_dirs: list[Path], mask_dirs: list[Path]) -> None:
        self.videos = videos
        self._frame_dirs = frame_dirs
        self._mask_dirs = mask_dirs
        self._source = FrameFolderSource(frame_dirs)
        self._frame_names: list[list[str] | None] = [None] * len(videos)
        self._annotated: list[dict[int, Path] | None] = [None] * len(videos)

    def __len__(self) -> int:
        return len(self.videos)

    def _check(self, index: int) -> int:
        n = len(self.videos)
        if not -n <= index < n:
            raise IndexError(f"video index {index} is out of range for {type(self).__name__} with {n} videos")
        return index % n

    def _frames(self, index: int) -> list[str]:
        index = self._check(index)
        if self._frame_names[index] is None:
            names = image_files(self._frame_dirs[index])
            if not names:
                raise ValueError(f"frame folder {self._frame_dirs[index]} contains no .jpg/.jpeg/.png frames")
            self._frame_names[index] = names
        return self._frame_names[index]

    def _annotations(self, index: int) -> dict[int, Path]:
        """frame index -> its annotation PNG, for the frames that have one."""
        index = self._check(index)
        if self._annotated[index] is None:
            folder = self._mask_dirs[index]
            pngs = {os.path.splitext(n)[0]: n for n in os.listdir(folder) if n.lower().endswith(".png")}
            self._annotated[index] = {
                k: folder / pngs[stem]
                for k, stem in enumerate(os.path.splitext(n)[0] for n in self._frames(index))
                if stem in pngs
            }
        return self._annotated[index]

    # VideoSource
    def video_name(self, index: int) -> str:
        return self.videos[self._check(index)]

    def num_frames(self, index: int) -> int:
        return len(self._frames(index))

    def fps(self, index: int) -> float | None:
        return None

    def ground_truth(self, index: int) -> None:
        return None

    def read_frames(self, index: int, frame_indices: Sequence[int]) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB frames at ``frame_indices`` (any order, repeats allowed)."""
        return self._source.read_frames(self._check(index), frame_indices)

    # masks
    def frame_name(self, index: int, frame: int) -> str:
        """File name of frame ``frame`` of video ``index`` (e.g. ``00005.jpg``)."""
        return self._frames(index)[frame]

    def annotated_frames(self, index: int) -> list[int]:
        """Indices of the frames that have an annotation PNG, ascending."""
        return sorted(self._annotations(index))

    def read_masks(self, index: int, frame_indices: Sequence[int]) -> np.ndarray:
        """(T, H, W) int64 instance masks: 0 background, i >= 1 object i, 255 void."""
        index = self._check(index)
        names = self._frames(index)
        idx = check_indices(frame_indices, len(names), self.videos[index])
        annotations = self._annotations(index)
        unique, inverse = np.unique(idx, return_inverse=True)
        masks = []
        for k in unique.tolist():
            if k not in annotations:
                have = self.annotated_frames(index)
                shown = ", ".join(map(str, have[:10])) + (", ..." if len(have) > 10 else "")
                raise MissingAnnotationError(
                    f"frame {k} ({names[k]}) of video {self.videos[index]} has no annotation: no "
                    f"{os.path.splitext(names[k])[0]}.png in {self._mask_dirs[index]}; annotated frames: "
                    f"[{shown}] ({len(have)} of {len(names)})"
                )
            mask = read_label_png(annotations[k]).astype(np.int64)
            if self._merge_objects:
                mask = np.where(mask > 0, 1, 0)
            if masks and mask.shape != masks[0].shape:
                raise ValueError(
                    f"mask {annotations[k]} is {mask.shape[1]}x{mask.shape[0]} but earlier masks of video "
                    f"{self.videos[index]} are {masks[0].shape[1]}x{masks[0].shape[0]} (W x H)"
                )
            masks.append(mask)
        return np.stack(masks)[inverse]

    def object_ids(self, index: int) -> list[int]:
        """Object ids (>= 1, void excluded) present in the first annotated frame of video ``index``."""
        annotated = self.annotated_frames(index)
        if not annotated:
            raise MissingAnnotationError(
                f"video {self.video_name(index)} has no annotated frame in {self._mask_dirs[self._check(index)]}"
            )
        values = np.unique(self.read_masks(index, annotated[:1]))
        return [int(v) for v in values if v != 0 and v != IGNORE_INDEX]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, videos={len(self)})"


def _missing_folders(videos: Sequence[str], folder: Path) -> list[str]:
    present = {e.name for e in os.scandir(folder) if e.is_dir()} if folder.is_dir() else set()
    return [v for v in videos if v not in present]


def _raise_missing(missing: list[str], total: int, folder: Path, source: str) -> None:
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    raise DatasetLayoutError(
        f"{len(missing)} of the {total} videos listed by {source} have no folder in {folder}: {shown}"
    )


# ----------------------------------------------------------------------------- DAVIS

_DAVIS_LAYOUT = """\
expected the DAVIS layout (root = the DAVIS folder, or a folder holding DAVIS/):
  <root>/JPEGImages/<resolution>/<video>/00000.jpg
  <root>/Annotations/<resolution>/<video>/00000.png   (palette PNGs: 0 background, 1..N objects)
  <root>/ImageSets/<year>/{train,val}.txt             (one video name per line)"""


class DAVIS(_FrameMaskVideos):
    """DAVIS video object segmentation (DAVIS-2017 by default).

    Args:
        root: the ``DAVIS`` folder (``DAVIS-2017-trainval-480p.zip`` unzipped), or a folder
            holding it.
        split: ``"val"`` (30 videos for 2017) or ``"train"`` (60); any other list present in
            ``ImageSets/<year>/`` (e.g. ``"test-dev"``) is accepted too.
        year: 2017 (multi-object masks as stored) or 2016 (the ``ImageSets/2016`` lists, with
            all objects merged into one foreground object 1, the single-object DAVIS-2016
            protocol; DAVIS-2016's own 0/255 masks also become 0/1).
        resolution: ``"480p"`` or ``"Full-Resolution"``.

    Masks are instance ids as stored: 0 background, i >= 1 object i, and 255 kept as void
    (:data:`IGNORE_INDEX`) where a release marks it. All frames of train/val are annotated.
    """

    def __init__(self, root: str | os.PathLike, split: str = "val", year: int = 2017, resolution: str = "480p"):
        if int(year) not in (2016, 2017):
            raise ValueError(f"DAVIS: year must be 2016 or 2017, got {year!r}")
        if resolution not in ("480p", "Full-Resolution"):
            raise ValueError(f"DAVIS: resolution must be '480p' or 'Full-Resolution', got {resolution!r}")
        year = int(year)
        given = Path(root)
        base = next((c for c in (given, given / "DAVIS") if (c / "JPEGImages").is_dir()), None)
        if base is None:
            raise DatasetLayoutError(f"DAVIS: no DAVIS dataset at {given}; {_DAVIS_LAYOUT}\nfound: {_describe(given)}")
        frames_root = base / "JPEGImages" / resolution
        masks_root = base / "Annotations" / resolution
        list_file = base / "ImageSets" / str(year) / f"{split}.txt"
        for path, parent in ((frames_root, base / "JPEGImages"), (masks_root, base / "Annotations"),
                             (list_file, base / "ImageSets" / str(year))):
            if not path.exists():
                raise DatasetLayoutError(
                    f"DAVIS(split={split!r}, year={year}, resolution={resolution!r}): {path} not found; "
                    f"{_DAVIS_LAYOUT}\nfound: {_describe(parent if parent.exists() else base)}"
                )
        with open(list_file, encoding="utf-8") as f:
            videos = [line.strip() for line in f if line.strip()]
        if not videos:
            raise DatasetLayoutError(f"DAVIS: split list {list_file} is empty")
        for folder in (frames_root, masks_root):
            missing = _missing_folders(videos, folder)
            if missing:
                _raise_missing(missing, len(videos), folder, list_file)
        self.root = base
        self.split = split
        self.year = year
        self.resolution = resolution
        self.list_file = list_file
        self._merge_objects = year == 2016
        self._setup(videos, [frames_root / v for v in videos], [masks_root / v for v in videos])

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", year={self.year}, resolution={self.resolution!r})"


# ----------------------------------------------------------------------------- YouTube-VOS

_YTVOS_LAYOUT = """\
expected the YouTube-VOS layout (root = the folder holding train/ and valid/):
  <root>/<split>/JPEGImages/<video>/<frame>.jpg
  <root>/<split>/Annotations/<video>/<frame>.png     (palette PNGs: 0 background, 1..N objects)
  <root>/<split>/meta.json                           (objects: category and frame lists)
  <root>/<split>_all_frames/JPEGImages/<video>/*.jpg  (all_frames=True only)"""


class YouTubeVOS(_FrameMaskVideos):
    """YouTube-VOS (2018/2019 layout) for video object segmentation.

    Args:
        root: the folder holding ``train/``, ``valid/`` (and optionally
            ``train_all_frames/``, ``valid_all_frames/``).
        split: ``"valid"`` or ``"train"`` (or any other ``<split>`` folder, e.g. ``"test"``).
        all_frames: False reads the frames of ``<split>/JPEGImages`` (sampled at 6 fps, every
            5th frame of the 30 fps video); True reads every frame from
            ``<split>_all_frames/JPEGImages``, the masks still coming from
            ``<split>/Annotations`` (matched by file name, so only every 5th frame, or fewer,
            is annotated).

    Videos are the folders of ``<split>/JPEGImages`` in name order; each needs its
    ``<split>/Annotations`` folder. Annotations exist for every ``JPEGImages`` frame on train,
    and on valid only for the frame where each object first appears; ``object_ids`` lists the
    objects of the first annotated frame only (on valid, later objects appear in later
    annotated frames; :meth:`objects` reads them from ``meta.json``).
    """

    def __init__(self, root: str | os.PathLike, split: str = "valid", all_frames: bool = False):
        base = Path(root)
        split_dir = base / split
        frames_root = (base / f"{split}_all_frames" if all_frames else split_dir) / "JPEGImages"
        masks_root = split_dir / "Annotations"
        for path in (frames_root, masks_root):
            if not path.is_dir():
                raise DatasetLayoutError(
                    f"YouTubeVOS(split={split!r}, all_frames={all_frames}): {path} not found; {_YTVOS_LAYOUT}\n"
                    f"found: {_describe(path.parent if path.parent.exists() else base)}"
                )
        listing = split_dir / "JPEGImages"
        if not listing.is_dir():
            listing = frames_root
        videos = sorted((e.name for e in os.scandir(listing) if e.is_dir() and not e.name.startswith(".")),
                        key=natural_key)
        if not videos:
            raise DatasetLayoutError(f"YouTubeVOS(split={split!r}): {listing} holds no video folders; {_YTVOS_LAYOUT}")
        source = f"the video folders of {listing}"
        for folder in (frames_root, masks_root):
            missing = _missing_folders(videos, folder)
            if missing:
                _raise_missing(missing, len(videos), folder, source)
        self.root = base
        self.split = split
        self.all_frames = all_frames
        self.meta_path = split_dir / "meta.json"
        self._meta: dict | None = None
        self._setup(videos, [frames_root / v for v in videos], [masks_root / v for v in videos])

    def objects(self, index: int) -> dict[int, dict]:
        """``meta.json``'s objects of video ``index``: object id -> its entry as stored.

        Entries hold ``"category"`` (the class name) and ``"frames"`` (the stems of the frames
        the object appears in); read lazily, so a missing ``meta.json`` only fails here.
        """
        if self._meta is None:
            if not self.meta_path.is_file():
                raise DatasetLayoutError(f"YouTubeVOS: {self.meta_path} not found; {_YTVOS_LAYOUT}")
            with open(self.meta_path, encoding="utf-8") as f:
                self._meta = json.load(f).get("videos", {})
        name = self.video_name(index)
        if name not in self._meta:
            raise KeyError(f"video {name} is not in {self.meta_path}")
        return {int(k): dict(v) for k, v in self._meta[name].get("objects", {}).items()}

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", all_frames={self.all_frames})"
