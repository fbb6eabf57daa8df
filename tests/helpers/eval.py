"""Stub backbones and datasets for the evaluation protocols: colour-coded blocks whose patch
tokens (ClassCode) encode their class exactly."""

import numpy as np
import torch
import torch.nn.functional as F

from mosic.backbones.base import Backbone
from mosic.data.segmentation import IGNORE_INDEX, SegmentationSample


PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)  # colour == class


class ClassCode(Backbone):
    """Patch token = 5 x one-hot of the palette colour nearest to the patch's mean colour.

    ``dense_features`` calls ``preprocess`` (uint8 -> normalised float) then
    ``patch_tokens`` ((B, 3, H, W) -> (B, H/8, W/8, D)); nothing else. No parameters.
    """

    patch_size = 8
    embed_dim = 6
    num_prefix_tokens = 0

    def __init__(self):
        super().__init__()
        mean, std = torch.tensor(self.mean).view(1, 3), torch.tensor(self.std).view(1, 3)
        self.register_buffer("palette", (torch.from_numpy(PALETTE).float() / 255 - mean) / std)

    def patch_tokens(self, images, token_mask=None):
        self.check_images(images)
        colour = F.avg_pool2d(images, 8).permute(0, 2, 3, 1)  # (B, h, w, 3)
        nearest = torch.cdist(colour.reshape(-1, 3), self.palette).argmin(1).view(colour.shape[:3])
        return 5.0 * F.one_hot(nearest, self.embed_dim).float()

    def blocks_in_order(self):
        return []


class Blocks:
    """A SegmentationDataset of 4x4 patch-aligned blocks (``block`` px each), one class each."""

    num_classes = 4
    class_names = ("background", "red", "green", "blue")

    def __init__(self, n=24, seed=0, ignore_border=False, block=8):
        rng = np.random.default_rng(seed)
        self.classes = rng.integers(0, 4, size=(n, 4, 4))
        self.classes[:, 0, :4] = np.arange(4)  # every class in every image
        self.ignore_border = ignore_border
        self.block = block

    def __len__(self):
        return len(self.classes)

    def __getitem__(self, i):
        mask = np.kron(self.classes[i], np.ones((self.block, self.block), dtype=np.int64))
        image = PALETTE[mask]
        if self.ignore_border:
            mask = mask.copy()
            mask[:, :2] = IGNORE_INDEX
        return SegmentationSample(image, mask, f"blocks/{i}")


class BlockVideos:
    """A VideoSegmentationDataset (read_masks, no ground_truth) of moving colour blocks."""

    def __init__(self, num_videos=2, num_frames=4):
        rng = np.random.default_rng(1)
        self.videos = []
        for _ in range(num_videos):
            inst = np.zeros((num_frames, 32, 48), dtype=np.int64)
            colours = rng.permutation([1, 2, 3])
            for t in range(num_frames):  # objects of 2x2 patches
                inst[t, 0:16, 8 * t : 8 * t + 16] = 1
                inst[t, 16:32, 32 - 8 * t : 48 - 8 * t] = 2
                if t % 2 == 0:
                    inst[t, 16:32, 0:16] = 3  # object 3 only in even frames
            frames = PALETTE[np.r_[0, colours][inst]]
            masks = inst.copy()
            masks[:, :, -1] = IGNORE_INDEX  # an unlabelled column
            self.videos.append((frames, masks))

    def __len__(self):
        return len(self.videos)

    def video_name(self, index):
        return f"blocks/{index}"

    def num_frames(self, index):
        return len(self.videos[index][0])

    def fps(self, index):
        return None

    def read_frames(self, index, frame_indices):
        return self.videos[index][0][list(frame_indices)]

    def read_masks(self, index, frame_indices):
        return self.videos[index][1][list(frame_indices)]

    def annotated_frames(self, index):
        return [0, 1, 2]  # the last frame has no mask
