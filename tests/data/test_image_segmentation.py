"""Readers of Pascal VOC, ADE20K and COCO-Stuff (mosic.data.image_segmentation), on tiny fake datasets
(tests/helpers/segmentation.py; DAVIS and YouTube-VOS: tests/data/test_video_segmentation.py).

Each test writes a few 24x32 images and label PNGs in the dataset's real layout under
tmp_path, then checks shapes, dtypes, exact mask values after the documented remapping,
names, the protocols, and that wrong layouts give errors naming the expected layout.
"""

import pickle

import numpy as np
import pytest
from PIL import Image

from helpers.segmentation import H, W, assert_image, label_map, write, write_jpg, write_png
from mosic.data.image_segmentation import (
    ADE20K,
    COCO_STUFF15_CLASSES,
    COCO_STUFF_CATEGORIES,
    COCO_THING_CATEGORIES,
    COCO_THINGS_CLASSES,
    COCOSTUFF27_CLASSES,
    COCOSTUFF27_FINE_TO_COARSE,
    COCOStuff,
    DatasetLayoutError,
    MaskValueError,
    PascalVOC,
)
from mosic.data.segmentation import IGNORE_INDEX, SegmentationDataset


# ----------------------------------------------------------------------------- Pascal VOC

VOC_IDS = ["2007_000032", "2007_000039", "2008_000002"]
VOC_VALUES = {i: label_map([0, 1 + 7 * n, 15, 255]) for n, i in enumerate(VOC_IDS)}


@pytest.fixture
def voc(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    for n, i in enumerate(VOC_IDS):
        write_jpg(base / "JPEGImages" / f"{i}.jpg", n)
        write_png(base / "SegmentationClass" / f"{i}.png", VOC_VALUES[i])
        write_png(base / "SegmentationClassAug" / f"{i}.png", VOC_VALUES[i], palette=False)
    write(base / "ImageSets" / "Segmentation" / "val.txt", "2007_000039\n2008_000002\n")
    write(base / "ImageSets" / "Segmentation" / "train.txt", "2007_000032\n")
    write(base / "ImageSets" / "Segmentation" / "trainaug.txt", "\n".join(VOC_IDS) + "\n")
    return tmp_path


def test_voc_val(voc):
    for root in (voc, voc / "VOCdevkit", voc / "VOCdevkit" / "VOC2012"):
        ds = PascalVOC(root, "val")
        assert ds.root == voc / "VOCdevkit" / "VOC2012" and ds.split == "val"
        assert isinstance(ds, SegmentationDataset)
        assert len(ds) == 2 and ds.num_classes == 21 and len(ds.class_names) == 21
    assert ds.class_names[0] == "background" and ds.class_names[15] == "person" and ds.class_names[20] == "tvmonitor"
    for n, i in enumerate(["2007_000039", "2008_000002"]):
        sample = ds[n]
        assert sample.name == i
        assert_image(sample.image, VOC_IDS.index(i))
        assert sample.mask.dtype == np.int64 and sample.mask.shape == (H, W)
        np.testing.assert_array_equal(sample.mask, VOC_VALUES[i])  # 255 kept as ignore
    assert ds[-1].name == "2008_000002"
    with pytest.raises(IndexError):
        ds[2]
    assert [s.name for s in ds] == ["2007_000039", "2008_000002"]
    assert pickle.loads(pickle.dumps(ds))[0].name == "2007_000039"


def test_voc_train_and_trainaug(voc):
    assert [s.name for s in PascalVOC(voc, "train")] == ["2007_000032"]
    aug = PascalVOC(voc, "trainaug")
    assert len(aug) == 3 and aug.mask_path(0).parent.name == "SegmentationClassAug"
    np.testing.assert_array_equal(aug[2].mask, VOC_VALUES["2008_000002"])  # grayscale PNGs read alike
    # DeepLab's list location and two-column format
    base = voc / "VOCdevkit" / "VOC2012"
    (base / "ImageSets" / "Segmentation" / "trainaug.txt").unlink()
    write(base / "ImageSets" / "SegmentationAug" / "train_aug.txt",
          "/JPEGImages/2007_000039.jpg /SegmentationClassAug/2007_000039.png\n")
    aug = PascalVOC(voc, "trainaug")
    assert aug.names == ["2007_000039"] and aug.list_file.name == "train_aug.txt"


def test_voc_leopart_layout(tmp_path):
    write_jpg(tmp_path / "images" / "2007_000032.jpg", 0)
    write_png(tmp_path / "SegmentationClass" / "2007_000032.png", VOC_VALUES["2007_000032"])
    write(tmp_path / "sets" / "val.txt", "2007_000032\n")
    ds = PascalVOC(tmp_path, "val")
    np.testing.assert_array_equal(ds[0].mask, VOC_VALUES["2007_000032"])


def test_voc_errors(voc, tmp_path):
    with pytest.raises(DatasetLayoutError) as error:
        PascalVOC(tmp_path / "nowhere")
    message = str(error.value)
    assert "<root>/JPEGImages/*.jpg" in message and "<root>/SegmentationClass/*.png" in message
    assert "VOCdevkit/VOC2012" in message and "does not exist" in message
    with pytest.raises(DatasetLayoutError, match="found: .*ImageSets holds Segmentation/$"):
        PascalVOC(voc / "VOCdevkit" / "VOC2012" / "ImageSets")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        PascalVOC(voc, "test")

    base = voc / "VOCdevkit" / "VOC2012"
    (base / "JPEGImages" / "2008_000002.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match=r"1 of the 2 images listed by .*val.txt are missing .*2008_000002.jpg"):
        PascalVOC(voc, "val")
    (base / "ImageSets" / "Segmentation" / "trainaug.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="trainaug.txt or .*train_aug.txt not found") as error:
        PascalVOC(voc, "trainaug")
    assert "ImageSets/Segmentation/{train,val}.txt" in str(error.value)

    write_png(base / "SegmentationClass" / "2007_000032.png", label_map([0, 21, 254]))
    with pytest.raises(MaskValueError, match=r"2007_000032.png has unexpected values \[21, 254\]"):
        PascalVOC(voc, "train")[0]
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(base / "SegmentationClass" / "2007_000032.png")
    with pytest.raises(MaskValueError, match="is a RGB image; expected a single-channel label PNG"):
        PascalVOC(voc, "train")[0]


# ----------------------------------------------------------------------------- ADE20K

ADE_RAW = label_map([0, 1, 37, 150])


@pytest.fixture
def ade(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    for split, names in (("validation", ["ADE_val_00000002", "ADE_val_00000001"]), ("training", ["ADE_train_00000001"])):
        for n, name in enumerate(names):
            write_jpg(base / "images" / split / f"{name}.jpg", n)
            write_png(base / "annotations" / split / f"{name}.png", ADE_RAW, palette=False)
    return tmp_path


def test_ade20k(ade):
    ds = ADE20K(ade)  # a parent of ADEChallengeData2016
    assert isinstance(ds, SegmentationDataset) and ds.split == "validation"
    assert len(ds) == 2 and ds.names == ["ADE_val_00000001", "ADE_val_00000002"]
    assert ds.num_classes == 150 and len(ds.class_names) == 150
    assert ds.class_names[0] == "wall" and ds.class_names[36] == "lamp" and ds.class_names[149] == "flag"
    sample = ds[0]
    assert sample.name == "ADE_val_00000001"
    assert_image(sample.image, 1)
    assert sample.mask.dtype == np.int64
    np.testing.assert_array_equal(sample.mask, label_map([IGNORE_INDEX, 0, 36, 149]))  # 0 -> 255, c -> c - 1
    train = ADE20K(ade / "ADEChallengeData2016", "train")
    assert train.split == "training" and len(train) == 1
    raw = ADE20K(ade, "validation", reduce_zero_label=False)
    assert raw.num_classes == 151 and raw.class_names[0] == "other" and raw.class_names[1] == "wall"
    np.testing.assert_array_equal(raw[1].mask, ADE_RAW)


def test_ade20k_errors(ade, tmp_path):
    with pytest.raises(DatasetLayoutError) as error:
        ADE20K(tmp_path / "ADEChallengeData2016" / "images")
    assert "<root>/images/{training,validation}/*.jpg" in str(error.value)
    assert "<root>/annotations/{training,validation}/*.png" in str(error.value)
    assert "holds training/, validation/" in str(error.value)
    base = ade / "ADEChallengeData2016"
    (base / "annotations" / "validation" / "ADE_val_00000002.png").unlink()
    with pytest.raises(DatasetLayoutError, match="1 of the 2 masks .* missing .*ADE_val_00000002.png"):
        ADE20K(ade)
    write_png(base / "annotations" / "validation" / "ADE_val_00000002.png", label_map([3, 151, 200]), palette=False)
    with pytest.raises(MaskValueError, match=r"ADE_val_00000002.png has unexpected values \[151, 200\]"):
        ADE20K(ade)[1]


# ----------------------------------------------------------------------------- COCO-Stuff

# hand-picked stuffthingmaps values (COCO category id - 1) and what each variant makes of them
COCO_PICKS = {
    #  value: (name,        things, stuff15, stuff27, stuff171)
    0: ("person", 9, 255, 9, 0),
    2: ("car", 11, 255, 11, 2),
    17: ("dog", 1, 255, 7, 16),
    61: ("chair", 5, 255, 3, 56),
    72: ("laptop", 3, 255, 0, 63),
    91: ("banner", 255, 11, 17, 80),
    148: ("road", 255, 5, 21, 137),
    156: ("sky-other", 255, 8, 23, 145),
    181: ("wood", 255, 9, 24, 170),
    255: ("unlabelled", 255, 255, 255, 255),
}
COCO_RAW = label_map(list(COCO_PICKS))


@pytest.fixture
def coco(tmp_path):
    for n, name in enumerate(["000000000285", "000000000139"]):
        write_jpg(tmp_path / "images" / "val2017" / f"{name}.jpg", n)
        write_png(tmp_path / "annotations" / "val2017" / f"{name}.png", COCO_RAW, palette=False)
    return tmp_path


@pytest.mark.parametrize("column, variant, num_classes", [(1, "things", 12), (2, "stuff15", 15), (3, "stuff27", 27), (4, "stuff171", 171)])
def test_coco_variants(coco, column, variant, num_classes):
    ds = COCOStuff(coco, "val2017", variant)
    assert isinstance(ds, SegmentationDataset) and ds.variant == variant and ds.split == "val2017"
    assert ds.num_classes == num_classes == len(ds.class_names)
    assert len(ds) == 2 and ds.names == ["000000000139", "000000000285"]
    sample = ds[0]
    assert sample.name == "000000000139" and sample.mask.dtype == np.int64
    assert_image(sample.image, 1)
    expected = {v: row[column] for v, row in COCO_PICKS.items()}
    np.testing.assert_array_equal(sample.mask, label_map([expected[v] for v in COCO_PICKS]))
    if variant == "stuff171":  # fine classes keep their names
        for v, row in COCO_PICKS.items():
            if v != 255:
                assert ds.class_names[row[4]] == row[0]


def test_coco_class_names():
    assert COCO_THINGS_CLASSES == ("accessory", "animal", "appliance", "electronic", "food", "furniture",
                                   "indoor", "kitchen", "outdoor", "person", "sports", "vehicle")
    assert COCO_STUFF15_CLASSES[5] == "ground" and len(COCO_STUFF15_CLASSES) == 15
    assert COCOSTUFF27_CLASSES[9] == "person" and COCOSTUFF27_CLASSES[23] == "sky"
    assert len(COCO_THING_CATEGORIES) == 80 and len(COCO_STUFF_CATEGORIES) == 91


def test_cocostuff27_table_matches_official_supercategories():
    """STEGO's fine->coarse table agrees with COCO's supercategories for all 171 classes."""
    assert len(COCOSTUFF27_FINE_TO_COARSE) == 182
    rename = {"food": "food-things", "furniture": "furniture-things"}
    for cid, name, supercategory in (*COCO_THING_CATEGORIES, *COCO_STUFF_CATEGORIES):
        coarse = COCOSTUFF27_CLASSES[COCOSTUFF27_FINE_TO_COARSE[cid - 1]]
        assert coarse == rename.get(supercategory, supercategory), name
    assert all(COCOSTUFF27_FINE_TO_COARSE[cid - 1] < 12 for cid, _, _ in COCO_THING_CATEGORIES)
    assert all(COCOSTUFF27_FINE_TO_COARSE[cid - 1] >= 12 for cid, _, _ in COCO_STUFF_CATEGORIES)


def test_coco_layouts_and_image_list(coco):
    (coco / "images").rename(coco / "flat")
    (coco / "flat" / "val2017").rename(coco / "val2017")  # <root>/val2017/*.jpg
    ds = COCOStuff(coco, "val", "things")
    assert ds.split == "val2017" and len(ds) == 2
    write(coco / "curated.txt", "000000000285\n")
    ds = COCOStuff(coco, "val2017", "stuff27", image_list="curated.txt")
    assert ds.names == ["000000000285"]


def test_coco_errors(coco, tmp_path):
    with pytest.raises(DatasetLayoutError) as error:
        COCOStuff(coco, "train2017")
    message = str(error.value)
    assert "no images and no annotations for train2017" in message
    assert "<root>/images/{val2017,train2017}/*.jpg" in message and "<root>/annotations/{val2017,train2017}/*.png" in message
    with pytest.raises(ValueError, match="unknown variant 'things27'"):
        COCOStuff(coco, variant="things27")
    write(coco / "list.txt", "000000000139\n000000000777\n")
    with pytest.raises(DatasetLayoutError, match="1 of the 2 images listed by .*list.txt .*000000000777.jpg"):
        COCOStuff(coco, image_list=coco / "list.txt")
    # 11 = COCO id 12 "street sign" (dropped), 183 = stuff-only pixelmaps' "other"
    write_png(coco / "annotations" / "val2017" / "000000000139.png", label_map([0, 11, 183]), palette=False)
    with pytest.raises(MaskValueError, match=r"000000000139.png has unexpected values \[11, 183\].*stuffthingmaps"):
        COCOStuff(coco)[0]
