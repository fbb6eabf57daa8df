"""Readers for the standard image semantic segmentation datasets, in their published layouts.

* :class:`PascalVOC`: VOC2012 (``VOCdevkit/VOC2012``), splits ``val``, ``train`` and the
  SBD-augmented ``trainaug`` (10,582 images); 21 classes, 255 = boundary / ignore.
* :class:`ADE20K`: ADEChallengeData2016 (SceneParsing), ``validation`` / ``training``;
  150 classes (0 "other" becomes ignore).
* :class:`COCOStuff`: COCO-Stuff 164k ``stuffthingmaps_trainval2017``, ``val2017`` /
  ``train2017``, as ``things`` (COCO-Things, 12 thing supercategories), ``stuff15``
  (COCO-Stuff, 15 stuff supercategories), ``stuff27`` (PiCIE/STEGO cocostuff27) or
  ``stuff171`` (all 171 classes).

Every reader is a :class:`~mosic.data.segmentation.SegmentationDataset`: ``dataset[i]`` is a
:class:`~mosic.data.segmentation.SegmentationSample` with the image (H, W, 3) uint8 RGB, the
mask (H, W) int64 holding class ids in ``[0, num_classes)`` or :data:`IGNORE_INDEX` (255),
and the image's name (its file stem). Masks are read with PIL (palette PNGs keep their
indices) and remapped through a lookup table; a value the dataset cannot contain raises
:class:`MaskValueError` naming the file and the values. A wrong root raises
:class:`DatasetLayoutError` (a ``FileNotFoundError``) that names the expected layout and
what was found instead; split lists that name missing files raise it too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import VideoReadError
from .diagnosis import short_error
from .segmentation import IGNORE_INDEX, SegmentationSample
from .video_files import natural_key

__all__ = [
    "ADE20K",
    "ADE20K_CLASSES",
    "COCOSTUFF27_CLASSES",
    "COCOSTUFF27_FINE_TO_COARSE",
    "COCO_STUFF15_CLASSES",
    "COCO_STUFF_CATEGORIES",
    "COCO_THINGS_CLASSES",
    "COCO_THING_CATEGORIES",
    "VOC_CLASSES",
    "COCOStuff",
    "DatasetLayoutError",
    "MaskValueError",
    "PascalVOC",
    "read_label_png",
]


class DatasetLayoutError(FileNotFoundError):
    """A dataset root does not have the expected layout, or its split list names missing files."""


class MaskValueError(ValueError):
    """A mask file holds values the dataset cannot contain (wrong file, wrong format)."""


# ----------------------------------------------------------------------------- helpers


def _describe(path: Path, limit: int = 12) -> str:
    """What is at ``path``, for error messages: missing, a file, or its first entries."""
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_dir():
        return f"{path} is a file, not a folder"
    try:
        names = sorted((e for e in os.listdir(path) if not e.startswith(".")), key=natural_key)
    except OSError as error:
        return f"{path} cannot be listed ({error})"
    if not names:
        return f"{path} is an empty folder"
    shown = ", ".join(n + ("/" if (path / n).is_dir() else "") for n in names[:limit])
    more = f", ... ({len(names)} entries in all)" if len(names) > limit else ""
    return f"{path} holds {shown}{more}"


def _listdir(folder: Path) -> set[str]:
    """Names of the visible entries of ``folder`` (one listing instead of a stat per file)."""
    with os.scandir(folder) as entries:
        return {e.name for e in entries if not e.name.startswith(".")}


def _stems(folder: Path, suffixes: tuple[str, ...]) -> list[str]:
    """Stems of the files in ``folder`` with one of ``suffixes`` (lower case), in natural order."""
    names = [n for n in _listdir(folder) if n.lower().endswith(suffixes)]
    return sorted((os.path.splitext(n)[0] for n in names), key=natural_key)


def _read_list(path: Path) -> list[str]:
    """Image ids of a split list: one per line; a line's first token may be a path, whose stem is taken.

    Handles plain VOC lists (``2007_000032``) and DeepLab's ``train_aug.txt``
    (``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png``).
    """
    ids = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if parts:
                ids.append(os.path.splitext(os.path.basename(parts[0]))[0])
    if not ids:
        raise DatasetLayoutError(f"split list {path} is empty")
    return ids


def _check_listed(ids: Sequence[str], folder: Path, suffix: str, what: str, source: str) -> None:
    """Raise naming the first few ids whose ``folder/<id><suffix>`` is missing."""
    present = _listdir(folder)
    missing = [i for i in ids if i + suffix not in present]
    if missing:
        shown = ", ".join(f"{i}{suffix}" for i in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DatasetLayoutError(
            f"{len(missing)} of the {len(ids)} {what} listed by {source} are missing from {folder}: "
            f"{shown}{more}"
        )


def _read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as error:
        raise VideoReadError(path, short_error(error)) from error


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """(H, W) integer array of the indices stored in a single-channel label PNG.

    Palette ("P") PNGs give their palette indices, grayscale ("L", "I;16", "I") PNGs their
    values. Colour PNGs (RGB/RGBA) raise :class:`MaskValueError`: they are visualisations,
    not label maps.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
                raise MaskValueError(
                    f"mask {os.fspath(path)} is a {mode} image; expected a single-channel label PNG "
                    "(palette or grayscale) whose pixel values are class/instance indices"
                )
            return np.array(image)
    except OSError as error:
        raise VideoReadError(path, short_error(error)) from error


def _lookup_table(mapping: dict[int, int]) -> np.ndarray:
    """(256,) int64 table: raw value -> mapped value, -1 for values not in ``mapping``."""
    lut = np.full(256, -1, np.int64)
    for raw, mapped in mapping.items():
        lut[raw] = mapped
    return lut


def _apply_lut(raw: np.ndarray, lut: np.ndarray, path: Path, expected: str) -> np.ndarray:
    """``lut[raw]`` as int64; values the table marks -1 (or beyond 255) raise MaskValueError."""
    if raw.size and (raw.min() < 0 or raw.max() >= len(lut)):
        bad = np.unique(raw[(raw < 0) | (raw >= len(lut))])
        raise MaskValueError(
            f"mask {path} has unexpected values {bad[:10].tolist()}; expected {expected}"
        )
    mask = lut[raw.astype(np.int64)]
    invalid = mask < 0
    if invalid.any():
        bad = np.unique(raw[invalid])
        more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
        raise MaskValueError(
            f"mask {path} has unexpected values {bad[:10].tolist()}{more}; expected {expected}"
        )
    return mask


class _ImageMaskDataset:
    """Images and masks paired by name; subclasses set the paths, ``_lut`` and ``_expected``."""

    num_classes: int
    class_names: Sequence[str]
    root: Path
    split: str
    names: list[str]
    _image_paths: list[Path]
    _mask_paths: list[Path]
    _lut: np.ndarray
    _expected: str  # the raw mask values the dataset may hold, for MaskValueError

    def __len__(self) -> int:
        return len(self.names)

    def _check_index(self, index: int) -> int:
        n = len(self.names)
        if not -n <= index < n:
            raise IndexError(f"image {index} is out of range for {type(self).__name__} with {n} images")
        return index % n

    def image_path(self, index: int) -> Path:
        return self._image_paths[self._check_index(index)]

    def mask_path(self, index: int) -> Path:
        return self._mask_paths[self._check_index(index)]

    def read_mask(self, index: int) -> np.ndarray:
        """(H, W) int64 remapped mask of image ``index`` (without decoding the image)."""
        path = self.mask_path(index)
        return _apply_lut(read_label_png(path), self._lut, path, self._expected)

    def __getitem__(self, index: int) -> SegmentationSample:
        index = self._check_index(int(index))
        image = _read_image(self._image_paths[index])
        mask = self.read_mask(index)
        if image.shape[:2] != mask.shape:
            raise ValueError(
                f"image {self._image_paths[index]} is {image.shape[1]}x{image.shape[0]} but its mask "
                f"{self._mask_paths[index]} is {mask.shape[1]}x{mask.shape[0]} (W x H)"
            )
        return SegmentationSample(image, mask, self.names[index])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, images={len(self)})"


def _choose(value: str, choices: dict[str, str], what: str, cls: str) -> str:
    if value not in choices:
        raise ValueError(f"{cls}: unknown {what} {value!r}; choose one of {', '.join(sorted(set(choices)))}")
    return choices[value]


# ----------------------------------------------------------------------------- Pascal VOC

#: Pascal VOC 2012 classes in the standard order (index = mask value).
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

_VOC_LAYOUT = """\
expected the Pascal VOC 2012 layout (root = VOCdevkit/VOC2012, or a folder holding VOCdevkit/VOC2012 or VOC2012):
  <root>/JPEGImages/*.jpg
  <root>/SegmentationClass/*.png                   (palette PNGs: 0..20, 255 = ignore)
  <root>/ImageSets/Segmentation/{train,val}.txt
  <root>/SegmentationClassAug/*.png                (trainaug only: SBD-augmented masks)
  <root>/ImageSets/Segmentation/trainaug.txt       (trainaug only; or ImageSets/SegmentationAug/train_aug.txt)
or the Leopart/TimeT layout: <root>/images/*.jpg, <root>/SegmentationClass[Aug]/*.png, <root>/sets/<split>.txt"""


class PascalVOC(_ImageMaskDataset):
    """Pascal VOC 2012 semantic segmentation: 21 classes (background + 20), 255 = ignore.

    Args:
        root: the ``VOC2012`` folder, or a folder holding ``VOCdevkit/VOC2012`` or ``VOC2012``.
            The layout used by Leopart/TimeT/MoSiC's evaluation code (``images/``, ``sets/``,
            ``SegmentationClass[Aug]/``) is accepted as well.
        split: ``"val"`` (1,449 images), ``"train"`` (1,464) or ``"trainaug"`` (the 10,582
            images of VOC train + SBD, masks from ``SegmentationClassAug``; the list is
            ``ImageSets/Segmentation/trainaug.txt`` or DeepLab's
            ``ImageSets/SegmentationAug/train_aug.txt``).

    Masks keep VOC's values: 0 background, 1..20 the classes (:data:`VOC_CLASSES` order),
    255 object boundaries and difficult regions (ignored).
    """

    SPLITS = ("val", "train", "trainaug")

    def __init__(self, root: str | os.PathLike, split: str = "val"):
        split = _choose(split, {s: s for s in self.SPLITS}, "split", "PascalVOC")
        given = Path(root)
        base = next(
            (c for c in (given, given / "VOCdevkit" / "VOC2012", given / "VOC2012")
             if (c / "JPEGImages").is_dir() or ((c / "images").is_dir() and (c / "sets").is_dir())),
            None,
        )
        if base is None:
            raise DatasetLayoutError(f"PascalVOC: no Pascal VOC 2012 dataset at {given}; {_VOC_LAYOUT}\nfound: {_describe(given)}")
        mask_dir = base / ("SegmentationClassAug" if split == "trainaug" else "SegmentationClass")
        if (base / "JPEGImages").is_dir():
            image_dir = base / "JPEGImages"
            lists = [base / "ImageSets" / "Segmentation" / f"{split}.txt"]
            if split == "trainaug":
                lists.append(base / "ImageSets" / "SegmentationAug" / "train_aug.txt")
        else:
            image_dir = base / "images"
            lists = [base / "sets" / f"{split}.txt"]
        list_file = next((p for p in lists if p.is_file()), None)
        missing = ([" or ".join(str(p) for p in lists)] if list_file is None else []) + (
            [str(mask_dir)] if not mask_dir.is_dir() else []
        )
        if missing:
            raise DatasetLayoutError(
                f"PascalVOC(split={split!r}): {' and '.join(missing)} not found; {_VOC_LAYOUT}\n"
                f"found: {_describe(base)}"
            )
        ids = _read_list(list_file)
        _check_listed(ids, image_dir, ".jpg", "images", list_file)
        _check_listed(ids, mask_dir, ".png", "masks", list_file)
        self.root = base
        self.split = split
        self.list_file = list_file
        self.names = ids
        self._image_paths = [image_dir / f"{i}.jpg" for i in ids]
        self._mask_paths = [mask_dir / f"{i}.png" for i in ids]
        self.num_classes = 21
        self.class_names = list(VOC_CLASSES)
        self._lut = _lookup_table({**{c: c for c in range(21)}, IGNORE_INDEX: IGNORE_INDEX})
        self._expected = "class indices 0..20 and 255 (ignore), as in Pascal VOC's palette PNGs"


# ----------------------------------------------------------------------------- ADE20K

#: The 150 ADE20K SceneParsing classes (objectInfo150 order): class c is annotation value c + 1.
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)

_ADE_LAYOUT = """\
expected the ADE20K SceneParsing layout (root = ADEChallengeData2016, or a folder holding it):
  <root>/images/{training,validation}/*.jpg
  <root>/annotations/{training,validation}/*.png   (0 = other/unlabelled, 1..150 = classes)"""


class ADE20K(_ImageMaskDataset):
    """ADE20K SceneParsing (ADEChallengeData2016): 150 classes.

    Args:
        root: the ``ADEChallengeData2016`` folder, or a folder holding it.
        split: ``"validation"`` (2,000 images) or ``"training"`` (20,210); ``"val"`` and
            ``"train"`` are accepted as aliases.
        reduce_zero_label: the standard protocol (default True): annotation value 0
            ("other", unlabelled) becomes :data:`IGNORE_INDEX` (255) and value c in 1..150
            becomes class c - 1, giving 150 classes (:data:`ADE20K_CLASSES`). False keeps the
            raw values 0..150 as 151 classes with class 0 "other", as NeCo's linear-probe
            code (which MoSiC's evaluation reuses) does.

    Images are every ``*.jpg`` of ``images/<split>`` in name order; each needs its mask.
    """

    SPLITS: ClassVar[dict[str, str]] = {"validation": "validation", "training": "training", "val": "validation", "train": "training"}

    def __init__(self, root: str | os.PathLike, split: str = "validation", reduce_zero_label: bool = True):
        split = _choose(split, self.SPLITS, "split", "ADE20K")
        given = Path(root)
        base = next(
            (c for c in (given, given / "ADEChallengeData2016")
             if (c / "images").is_dir() and (c / "annotations").is_dir()),
            None,
        )
        if base is None:
            raise DatasetLayoutError(f"ADE20K: no ADE20K dataset at {given}; {_ADE_LAYOUT}\nfound: {_describe(given)}")
        image_dir, mask_dir = base / "images" / split, base / "annotations" / split
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise DatasetLayoutError(
                    f"ADE20K(split={split!r}): {folder} not found; {_ADE_LAYOUT}\nfound: {_describe(folder.parent)}"
                )
        ids = _stems(image_dir, (".jpg",))
        if not ids:
            raise DatasetLayoutError(f"ADE20K(split={split!r}): {image_dir} holds no .jpg images; {_ADE_LAYOUT}")
        _check_listed(ids, mask_dir, ".png", "masks", f"the images of {image_dir}")
        self.root = base
        self.split = split
        self.reduce_zero_label = reduce_zero_label
        self.names = ids
        self._image_paths = [image_dir / f"{i}.jpg" for i in ids]
        self._mask_paths = [mask_dir / f"{i}.png" for i in ids]
        if reduce_zero_label:
            self.num_classes = 150
            self.class_names = list(ADE20K_CLASSES)
            self._lut = _lookup_table({0: IGNORE_INDEX, **{c: c - 1 for c in range(1, 151)}})
        else:
            self.num_classes = 151
            self.class_names = ["other", *ADE20K_CLASSES]
            self._lut = _lookup_table({c: c for c in range(151)})
        self._expected = "values 0..150 (0 = other/unlabelled), as in ADEChallengeData2016 annotations"

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", reduce_zero_label={self.reduce_zero_label})"


# ----------------------------------------------------------------------------- COCO-Stuff

# COCO's official categories, (category id, name, supercategory): the 80 things of the
# COCO 2017 instances/panoptic annotations (cocodataset.org, "categories" of
# instances_val2017.json) and the 91 stuff classes of COCO-Stuff (github.com/nightrome/cocostuff,
# "categories" of stuff_val2017.json; its 92nd, 183 "other", is not in stuffthingmaps).
# Pixel value v of a stuffthingmaps PNG is category id v + 1 (255 = unlabelled); the 11 ids
# missing below (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91) are thing classes COCO dropped.
COCO_THING_CATEGORIES = (
    (1, "person", "person"),
    (2, "bicycle", "vehicle"), (3, "car", "vehicle"), (4, "motorcycle", "vehicle"), (5, "airplane", "vehicle"),
    (6, "bus", "vehicle"), (7, "train", "vehicle"), (8, "truck", "vehicle"), (9, "boat", "vehicle"),
    (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"), (13, "stop sign", "outdoor"),
    (14, "parking meter", "outdoor"), (15, "bench", "outdoor"),
    (16, "bird", "animal"), (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"),
    (20, "sheep", "animal"), (21, "cow", "animal"), (22, "elephant", "animal"), (23, "bear", "animal"),
    (24, "zebra", "animal"), (25, "giraffe", "animal"),
    (27, "backpack", "accessory"), (28, "umbrella", "accessory"), (31, "handbag", "accessory"),
    (32, "tie", "accessory"), (33, "suitcase", "accessory"),
    (34, "frisbee", "sports"), (35, "skis", "sports"), (36, "snowboard", "sports"), (37, "sports ball", "sports"),
    (38, "kite", "sports"), (39, "baseball bat", "sports"), (40, "baseball glove", "sports"),
    (41, "skateboard", "sports"), (42, "surfboard", "sports"), (43, "tennis racket", "sports"),
    (44, "bottle", "kitchen"), (46, "wine glass", "kitchen"), (47, "cup", "kitchen"), (48, "fork", "kitchen"),
    (49, "knife", "kitchen"), (50, "spoon", "kitchen"), (51, "bowl", "kitchen"),
    (52, "banana", "food"), (53, "apple", "food"), (54, "sandwich", "food"), (55, "orange", "food"),
    (56, "broccoli", "food"), (57, "carrot", "food"), (58, "hot dog", "food"), (59, "pizza", "food"),
    (60, "donut", "food"), (61, "cake", "food"),
    (62, "chair", "furniture"), (63, "couch", "furniture"), (64, "potted plant", "furniture"),
    (65, "bed", "furniture"), (67, "dining table", "furniture"), (70, "toilet", "furniture"),
    (72, "tv", "electronic"), (73, "laptop", "electronic"), (74, "mouse", "electronic"),
    (75, "remote", "electronic"), (76, "keyboard", "electronic"), (77, "cell phone", "electronic"),
    (78, "microwave", "appliance"), (79, "oven", "appliance"), (80, "toaster", "appliance"),
    (81, "sink", "appliance"), (82, "refrigerator", "appliance"),
    (84, "book", "indoor"), (85, "clock", "indoor"), (86, "vase", "indoor"), (87, "scissors", "indoor"),
    (88, "teddy bear", "indoor"), (89, "hair drier", "indoor"), (90, "toothbrush", "indoor"),
)
COCO_STUFF_CATEGORIES = (
    (92, "banner", "textile"), (93, "blanket", "textile"), (94, "branch", "plant"), (95, "bridge", "building"),
    (96, "building-other", "building"), (97, "bush", "plant"), (98, "cabinet", "furniture-stuff"),
    (99, "cage", "structural"), (100, "cardboard", "raw-material"), (101, "carpet", "floor"),
    (102, "ceiling-other", "ceiling"), (103, "ceiling-tile", "ceiling"), (104, "cloth", "textile"),
    (105, "clothes", "textile"), (106, "clouds", "sky"), (107, "counter", "furniture-stuff"),
    (108, "cupboard", "furniture-stuff"), (109, "curtain", "textile"), (110, "desk-stuff", "furniture-stuff"),
    (111, "dirt", "ground"), (112, "door-stuff", "furniture-stuff"), (113, "fence", "structural"),
    (114, "floor-marble", "floor"), (115, "floor-other", "floor"), (116, "floor-stone", "floor"),
    (117, "floor-tile", "floor"), (118, "floor-wood", "floor"), (119, "flower", "plant"), (120, "fog", "water"),
    (121, "food-other", "food-stuff"), (122, "fruit", "food-stuff"), (123, "furniture-other", "furniture-stuff"),
    (124, "grass", "plant"), (125, "gravel", "ground"), (126, "ground-other", "ground"), (127, "hill", "solid"),
    (128, "house", "building"), (129, "leaves", "plant"), (130, "light", "furniture-stuff"),
    (131, "mat", "textile"), (132, "metal", "raw-material"), (133, "mirror-stuff", "furniture-stuff"),
    (134, "moss", "plant"), (135, "mountain", "solid"), (136, "mud", "ground"), (137, "napkin", "textile"),
    (138, "net", "structural"), (139, "paper", "raw-material"), (140, "pavement", "ground"),
    (141, "pillow", "textile"), (142, "plant-other", "plant"), (143, "plastic", "raw-material"),
    (144, "platform", "ground"), (145, "playingfield", "ground"), (146, "railing", "structural"),
    (147, "railroad", "ground"), (148, "river", "water"), (149, "road", "ground"), (150, "rock", "solid"),
    (151, "roof", "building"), (152, "rug", "textile"), (153, "salad", "food-stuff"), (154, "sand", "ground"),
    (155, "sea", "water"), (156, "shelf", "furniture-stuff"), (157, "sky-other", "sky"),
    (158, "skyscraper", "building"), (159, "snow", "ground"), (160, "solid-other", "solid"),
    (161, "stairs", "furniture-stuff"), (162, "stone", "solid"), (163, "straw", "plant"),
    (164, "structural-other", "structural"), (165, "table", "furniture-stuff"), (166, "tent", "building"),
    (167, "textile-other", "textile"), (168, "towel", "textile"), (169, "tree", "plant"),
    (170, "vegetable", "food-stuff"), (171, "wall-brick", "wall"), (172, "wall-concrete", "wall"),
    (173, "wall-other", "wall"), (174, "wall-panel", "wall"), (175, "wall-stone", "wall"),
    (176, "wall-tile", "wall"), (177, "wall-wood", "wall"), (178, "water-other", "water"),
    (179, "waterdrops", "water"), (180, "window-blind", "window"), (181, "window-other", "window"),
    (182, "wood", "solid"),
)

#: cocostuff27 classes (PiCIE / STEGO; order from IIC's cocostuff_fine_to_coarse.py): 12 thing
#: supercategories, then 15 stuff supercategories.
COCOSTUFF27_CLASSES = (
    "electronic", "appliance", "food-things", "furniture-things", "indoor", "kitchen", "accessory", "animal",
    "outdoor", "person", "sports", "vehicle",
    "ceiling", "floor", "food-stuff", "furniture-stuff", "raw-material", "textile", "wall", "window",
    "building", "ground", "plant", "sky", "solid", "structural", "water",
)

#: stuffthingmaps pixel value (0..181) -> cocostuff27 class, verbatim from STEGO's
#: ``src/data.py`` (``Coco.fine_to_coarse``, itself from PiCIE/IIC). Values 11, 25, 28, 29, 44,
#: 65, 67, 68, 70, 82, 90 are dropped COCO classes: listed here, but never valid in a mask.
COCOSTUFF27_FINE_TO_COARSE = (
    9, 11, 11, 11, 11, 11, 11, 11, 11, 8, 8, 8, 8, 8, 8, 7, 7, 7, 7, 7,  # 0-19
    7, 7, 7, 7, 7, 6, 6, 6, 6, 6, 6, 6, 6, 10, 10, 10, 10, 10, 10, 10,  # 20-39
    10, 10, 10, 5, 5, 5, 5, 5, 5, 5, 5, 2, 2, 2, 2, 2, 2, 2, 2, 2,  # 40-59
    2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0, 0, 1, 1, 1,  # 60-79
    1, 1, 1, 4, 4, 4, 4, 4, 4, 4, 4, 17, 17, 22, 20, 20, 22, 15, 25, 16,  # 80-99
    13, 12, 12, 17, 17, 23, 15, 15, 17, 15, 21, 15, 25, 13, 13, 13, 13, 13, 22, 26,  # 100-119
    14, 14, 15, 22, 21, 21, 24, 20, 22, 15, 17, 16, 15, 22, 24, 21, 17, 25, 16, 21,  # 120-139
    17, 22, 16, 21, 21, 25, 21, 26, 21, 24, 20, 17, 14, 21, 26, 15, 23, 20, 21, 24,  # 140-159
    15, 24, 22, 25, 15, 20, 17, 17, 22, 14, 18, 18, 18, 18, 18, 18, 18, 26, 26, 19,  # 160-179
    19, 24,  # 180-181
)

#: COCO-Things as Leopart / NeCo (and so MoSiC) define it: the 12 thing supercategories in
#: alphabetical order (the order ``sorted()`` gives them in Leopart's coco_data_module.py).
COCO_THINGS_CLASSES = tuple(sorted({s for _, _, s in COCO_THING_CATEGORIES}))
#: COCO-Stuff as Leopart / NeCo define it: the 15 stuff supercategories ("other" excluded),
#: alphabetically.
COCO_STUFF15_CLASSES = tuple(sorted({s for _, _, s in COCO_STUFF_CATEGORIES}))

_COCO_LAYOUT = """\
expected the COCO-Stuff 164k layout (stuffthingmaps_trainval2017 unzipped into annotations/):
  <root>/images/{val2017,train2017}/*.jpg          (or <root>/{val2017,train2017}/*.jpg)
  <root>/annotations/{val2017,train2017}/*.png     (stuffthingmaps: value = COCO category id - 1, 0..181; 255 = unlabelled)"""


def _coco_tables(variant: str) -> tuple[dict[int, int], list[str]]:
    """(stuffthingmaps value -> class, class names) of a COCOStuff variant; 255 -> 255 always."""
    things = {cid - 1: sup for cid, _, sup in COCO_THING_CATEGORIES}
    stuff = {cid - 1: sup for cid, _, sup in COCO_STUFF_CATEGORIES}
    if variant == "things":
        index = {s: i for i, s in enumerate(COCO_THINGS_CLASSES)}
        mapping = {v: index[s] for v, s in things.items()} | {v: IGNORE_INDEX for v in stuff}
        names = list(COCO_THINGS_CLASSES)
    elif variant == "stuff15":
        index = {s: i for i, s in enumerate(COCO_STUFF15_CLASSES)}
        mapping = {v: IGNORE_INDEX for v in things} | {v: index[s] for v, s in stuff.items()}
        names = list(COCO_STUFF15_CLASSES)
    elif variant == "stuff27":
        mapping = {v: COCOSTUFF27_FINE_TO_COARSE[v] for v in (*things, *stuff)}
        names = list(COCOSTUFF27_CLASSES)
    else:  # stuff171
        fine = sorted((cid - 1, name) for cid, name, _ in (*COCO_THING_CATEGORIES, *COCO_STUFF_CATEGORIES))
        mapping = {v: i for i, (v, _) in enumerate(fine)}
        names = [name for _, name in fine]
    return mapping | {IGNORE_INDEX: IGNORE_INDEX}, names


class COCOStuff(_ImageMaskDataset):
    """COCO-Stuff 164k (COCO 2017 images with stuff + thing pixel maps) in four class settings.

    Args:
        root: a folder holding ``images/<split>`` (or ``<split>`` directly) and
            ``annotations/<split>``, the ``stuffthingmaps_trainval2017`` PNGs (pixel value =
            COCO category id - 1, i.e. 0..181; 255 = unlabelled).
        split: ``"val2017"`` (5,000 images) or ``"train2017"`` (118k); ``"val"`` / ``"train"``
            are accepted as aliases.
        variant:

            * ``"things"``: COCO-Things as Leopart defines it and NeCo's evaluation code
              (used for MoSiC's tables) implements it: each of the 80 thing classes becomes
              its COCO supercategory, 12 classes numbered alphabetically
              (:data:`COCO_THINGS_CLASSES`: accessory, animal, appliance, electronic, food,
              furniture, indoor, kitchen, outdoor, person, sports, vehicle); stuff and
              unlabelled pixels are ignored (255). There is no background class.
            * ``"stuff15"``: COCO-Stuff as Leopart / NeCo define it: each of the 91 stuff
              classes becomes its supercategory, 15 classes numbered alphabetically
              (:data:`COCO_STUFF15_CLASSES`); thing and unlabelled pixels are ignored.
            * ``"stuff27"``: PiCIE / STEGO's cocostuff27: 12 thing + 15 stuff supercategories
              (:data:`COCOSTUFF27_CLASSES`, table :data:`COCOSTUFF27_FINE_TO_COARSE`);
              unlabelled pixels ignored.
            * ``"stuff171"``: the 80 thing + 91 stuff classes, numbered in category id order
              (as MMSegmentation's COCO-Stuff 164k); unlabelled pixels ignored.

        image_list: optional text file of image ids (one per line, e.g. STEGO's curated
            ``Coco164kFull_Stuff_Coarse.txt``), relative to ``root`` unless absolute;
            default: every ``*.jpg`` of the split in name order.

    Leopart and NeCo read the panoptic ``semantic_segmentation_*2017`` maps (things) and the
    stuff-only ``stuff_*2017_pixelmaps`` (stuff) rather than stuffthingmaps, with the same
    categories and supercategories; on stuffthingmaps the mapping above is theirs, but pixels
    on which the two annotation releases disagree (overlaps resolved differently by the
    panoptic conversion) may differ.
    """

    SPLITS: ClassVar[dict[str, str]] = {"val2017": "val2017", "train2017": "train2017", "val": "val2017", "train": "train2017"}
    VARIANTS = ("things", "stuff15", "stuff27", "stuff171")

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "val2017",
        variant: str = "stuff27",
        image_list: str | os.PathLike | None = None,
    ):
        split = _choose(split, self.SPLITS, "split", "COCOStuff")
        variant = _choose(variant, {v: v for v in self.VARIANTS}, "variant", "COCOStuff")
        base = Path(root)
        image_dir = next((d for d in (base / "images" / split, base / split) if d.is_dir()), None)
        mask_dir = next(
            (d for d in (base / "annotations" / split, base / "stuffthingmaps_trainval2017" / split) if d.is_dir()),
            None,
        )
        if image_dir is None or mask_dir is None:
            missing = [
                what for what, d in (("images", image_dir), ("annotations", mask_dir)) if d is None
            ]
            raise DatasetLayoutError(
                f"COCOStuff(split={split!r}): no {' and no '.join(missing)} for {split} under {base}; "
                f"{_COCO_LAYOUT}\nfound: {_describe(base)}"
            )
        if image_list is not None:
            list_path = Path(image_list)
            if not list_path.is_absolute() and (base / list_path).is_file():
                list_path = base / list_path
            if not list_path.is_file():
                raise DatasetLayoutError(f"COCOStuff: image list {image_list} not found (also looked in {base})")
            ids = _read_list(list_path)
            _check_listed(ids, image_dir, ".jpg", "images", list_path)
            source = str(list_path)
        else:
            ids = _stems(image_dir, (".jpg",))
            if not ids:
                raise DatasetLayoutError(f"COCOStuff(split={split!r}): {image_dir} holds no .jpg images; {_COCO_LAYOUT}")
            source = f"the images of {image_dir}"
        _check_listed(ids, mask_dir, ".png", "masks", source)
        mapping, names = _coco_tables(variant)
        self.root = base
        self.split = split
        self.variant = variant
        self.names = ids
        self._image_paths = [image_dir / f"{i}.jpg" for i in ids]
        self._mask_paths = [mask_dir / f"{i}.png" for i in ids]
        self.num_classes = len(names)
        self.class_names = names
        self._lut = _lookup_table(mapping)
        self._expected = (
            "stuffthingmaps values: COCO category id - 1 for the 171 used categories (0..181) and 255 "
            "(unlabelled); stuff-only pixelmaps or panoptic PNGs are a different format"
        )

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", variant={self.variant!r})"
