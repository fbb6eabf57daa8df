"""Procedural videos with exact ground truth: :class:`SyntheticVideos`.

Each video shows textured objects of several semantic classes moving (translation,
rotation, scale) and occluding each other over a textured background seen by a drifting
camera. Every colour is an exact function of continuous coordinates evaluated at pixel
centres (no anti-aliasing), so point tracks, visibility and masks are exact.

Coordinates are (x, y) pixels: x to the right, y down, the centre of pixel (row i,
column j) at (x=j, y=i), so an image of width W spans [-0.5, W - 0.5].

Geometry of video frame f (an integer frame index of the video):

* world -> frame subtracts the camera offset ``cam(f)``; the background texture is a
  function of world coordinates, so camera motion moves it;
* object k has a local coordinate system (unit = its base radius) in which its shape and
  texture are fixed; ``frame = centre_k(f) - cam(f) + radius_k * scale_k(f) * R(angle_k(f)) @ local``;
* objects are painted in order (painter's algorithm): object k has instance id k + 1 and
  occludes every object with a smaller id; 0 is the background.
"""

from __future__ import annotations

import colorsys
import math
import operator
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["SyntheticVideos", "SyntheticScene", "VideoIndexError"]

#: (shape, texture) family of classes 1..8; class c uses family (c - 1) % 8.
_FAMILIES = (
    ("ellipse", "stripes"),
    ("box", "checkers"),
    ("triangle", "dots"),
    ("disk", "rings"),
    ("diamond", "waves"),
    ("star", "spokes"),
    ("cross", "grid"),
    ("hexagon", "spiral"),
)
_TEXTURE_ADJECTIVE = {
    "stripes": "striped",
    "checkers": "checkered",
    "dots": "dotted",
    "rings": "ringed",
    "waves": "wavy",
    "spokes": "spoked",
    "grid": "gridded",
    "spiral": "spiral",
}

#: radius (in local units) of a disk containing every shape
_SHAPE_BOUND = 1.25


class VideoIndexError(IndexError, ValueError):
    """A video or frame index out of range (both an IndexError and a ValueError)."""


def _class_name(cls: int) -> str:
    shape, texture = _FAMILIES[(cls - 1) % len(_FAMILIES)]
    generation = (cls - 1) // len(_FAMILIES)
    name = f"{_TEXTURE_ADJECTIVE[texture]}-{shape}"
    return name if generation == 0 else f"{name}-{generation + 1}"


def _class_colours(cls: int) -> np.ndarray:
    """(2, 3) RGB in [0, 1]: a bright and a dark colour of a per-class hue."""
    hue = (0.05 + 0.618034 * (cls - 1)) % 1.0
    bright = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    dark = colorsys.hsv_to_rgb((hue + 0.08) % 1.0, 0.7, 0.3)
    return np.array([bright, dark])


@dataclass(frozen=True)
class _Camera:
    """cam(f) = velocity * (f - t_mid) + amplitude * sin(freq * f + phase), (2,) arrays."""

    t_mid: float
    velocity: np.ndarray
    amplitude: np.ndarray
    freq: float
    phase: np.ndarray

    def offset(self, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = np.asarray(f, dtype=np.float64)
        x = self.velocity[0] * (f - self.t_mid) + self.amplitude[0] * np.sin(self.freq * f + self.phase[0])
        y = self.velocity[1] * (f - self.t_mid) + self.amplitude[1] * np.sin(self.freq * f + self.phase[1])
        return x, y


@dataclass(frozen=True)
class _Background:
    """Low-frequency blobs mixing two colours plus fine detail, on world coordinates.

    ``blob_k``/``detail_k``: (K, 2) wave vectors (radians per pixel), ``*_phase``: (K,),
    ``colours``: (2, 3) RGB in [0, 1].
    """

    blob_k: np.ndarray
    blob_phase: np.ndarray
    detail_k: np.ndarray
    detail_phase: np.ndarray
    colours: np.ndarray

    def rgb(self, wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
        """(P,) world coordinates -> (P, 3) RGB in [0, 1]."""
        blob = sum(np.sin(k[0] * wx + k[1] * wy + p) for k, p in zip(self.blob_k, self.blob_phase))
        detail = sum(np.sin(k[0] * wx + k[1] * wy + p) for k, p in zip(self.detail_k, self.detail_phase))
        m = 0.5 + 0.5 * np.tanh(1.5 * blob / math.sqrt(len(self.blob_k) / 2))
        rgb = self.colours[0] + m[:, None] * (self.colours[1] - self.colours[0]) + 0.05 * detail[:, None]
        return np.clip(rgb, 0.0, 1.0)


@dataclass(frozen=True)
class _Object:
    """One object: class, shape, texture and a smooth similarity motion in world pixels.

    centre(f) = centre + velocity * (f - t_mid) + wobble_amp * sin(wobble_freq * f + wobble_phase)
    angle(f) = angle + spin * f;  size(f) = radius * (1 + scale_amp * sin(scale_freq * f + scale_phase))
    """

    cls: int
    radius: float
    aspect: float
    colours: np.ndarray  # (2, 3) RGB in [0, 1]
    texture_phase: np.ndarray  # (2,)
    t_mid: float
    centre: np.ndarray  # (2,)
    velocity: np.ndarray  # (2,)
    wobble_amp: np.ndarray  # (2,)
    wobble_freq: float
    wobble_phase: np.ndarray  # (2,)
    angle: float
    spin: float
    scale_amp: float
    scale_freq: float
    scale_phase: float

    def pose(self, f: np.ndarray, camera: _Camera) -> tuple[np.ndarray, ...]:
        """Frame-coordinate pose at frames ``f`` (any shape): cx, cy, cos, sin, size, each f.shape."""
        f = np.asarray(f, dtype=np.float64)
        camx, camy = camera.offset(f)
        wobble = np.sin(self.wobble_freq * f[..., None] + self.wobble_phase) * self.wobble_amp
        cx = self.centre[0] + self.velocity[0] * (f - self.t_mid) + wobble[..., 0] - camx
        cy = self.centre[1] + self.velocity[1] * (f - self.t_mid) + wobble[..., 1] - camy
        angle = self.angle + self.spin * f
        size = self.radius * (1.0 + self.scale_amp * np.sin(self.scale_freq * f + self.scale_phase))
        return cx, cy, np.cos(angle), np.sin(angle), size

    @staticmethod
    def to_local(pose: tuple[np.ndarray, ...], x, y) -> tuple[np.ndarray, np.ndarray]:
        """Frame pixels (x, y) -> local coordinates (u, v) under ``pose`` (broadcastable)."""
        cx, cy, c, s, size = pose
        dx, dy = x - cx, y - cy
        return (c * dx + s * dy) / size, (c * dy - s * dx) / size

    @staticmethod
    def to_frame(pose: tuple[np.ndarray, ...], u, v) -> tuple[np.ndarray, np.ndarray]:
        """Local coordinates (u, v) -> frame pixels (x, y) under ``pose`` (broadcastable)."""
        cx, cy, c, s, size = pose
        return cx + size * (c * u - s * v), cy + size * (s * u + c * v)

    def inside(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Exact inside-test of the class shape at local coordinates (bool, broadcast shape)."""
        u, v = np.broadcast_arrays(u, v)
        out = np.zeros(u.shape, dtype=bool)
        near = u * u + v * v <= _SHAPE_BOUND**2  # every shape lies in this disk
        out[near] = self._inside_shape(u[near], v[near])
        return out

    def _inside_shape(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        shape = _FAMILIES[(self.cls - 1) % len(_FAMILIES)][0]
        a = self.aspect
        if shape == "ellipse":
            return u**2 + (v / a) ** 2 <= 1.0
        if shape == "box":  # rounded rectangle (superellipse)
            return u**4 + (v / a) ** 4 <= 0.8
        if shape == "triangle":  # equilateral, circumradius 1.25, one vertex up (-v)
            return (v <= 0.625) & (0.866 * u - 0.5 * v <= 0.625) & (-0.866 * u - 0.5 * v <= 0.625)
        if shape == "disk":
            return u**2 + v**2 <= 1.0
        if shape == "diamond":
            return np.abs(u) + np.abs(v / a) <= 1.2
        if shape == "star":  # smooth five-pointed star
            return np.hypot(u, v) <= 0.75 + 0.35 * np.cos(5.0 * np.arctan2(v, u))
        if shape == "cross":
            au, av = np.abs(u), np.abs(v)
            return ((au <= 1.0) & (av <= 0.4)) | ((au <= 0.4) & (av <= 1.0))
        # hexagon, apothem 0.9
        return (np.abs(u) <= 0.9) & (np.abs(0.5 * u + 0.866 * v) <= 0.9) & (np.abs(0.5 * u - 0.866 * v) <= 0.9)

    def rgb(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """(P,) local coordinates -> (P, 3) RGB in [0, 1] of the class texture."""
        texture = _FAMILIES[(self.cls - 1) % len(_FAMILIES)][1]
        g = 1.0 + 0.35 * ((self.cls - 1) // len(_FAMILIES))  # later generations: finer patterns
        p0, p1 = self.texture_phase
        tau = 2.0 * math.pi
        if texture == "stripes":
            m = 0.5 + 0.5 * np.sin(tau * 1.5 * g * u + p0)
        elif texture == "checkers":
            m = 0.5 + 0.5 * np.tanh(3.0 * np.sin(tau * g * u + p0) * np.sin(tau * g * v + p1))
        elif texture == "dots":
            du = np.mod(1.6 * g * u + p0 / tau, 1.0) - 0.5
            dv = np.mod(1.6 * g * v + p1 / tau, 1.0) - 0.5
            m = np.exp(-(du**2 + dv**2) / 0.04)
        elif texture == "rings":
            m = 0.5 + 0.5 * np.cos(tau * 1.5 * g * np.hypot(u, v) + p0)
        elif texture == "waves":
            m = 0.5 + 0.5 * np.sin(tau * (1.5 * g * v + 0.25 * np.sin(tau * u + p1)) + p0)
        elif texture == "spokes":
            m = 0.5 + 0.5 * np.cos(round(6 * g) * np.arctan2(v, u) + p0)
        elif texture == "grid":
            m = np.maximum(np.cos(math.pi * 1.5 * g * u + p0) ** 8, np.cos(math.pi * 1.5 * g * v + p1) ** 8)
        else:  # spiral
            m = 0.5 + 0.5 * np.sin(3.0 * np.arctan2(v, u) + tau * 1.5 * g * np.hypot(u, v) + p0)
        return self.colours[0] + m[:, None] * (self.colours[1] - self.colours[0])


def _as_frames(frame_indices: Sequence[int], num_frames: int) -> np.ndarray:
    """Validated (T,) int64 frame indices in [0, num_frames)."""
    frames = np.asarray(frame_indices)
    if frames.size == 0:
        return np.zeros(0, dtype=np.int64)
    if frames.ndim != 1 or frames.dtype.kind not in "iu":
        raise ValueError(f"frame_indices must be a 1-D sequence of ints, got {frames.dtype} shape {frames.shape}")
    bad = (frames < 0) | (frames >= num_frames)
    if bad.any():
        raise VideoIndexError(
            f"frame index {int(frames[bad][0])} out of range: the video has {num_frames} frames "
            f"(valid 0..{num_frames - 1})"
        )
    return frames.astype(np.int64)


class SyntheticScene:
    """Exact description of one synthetic video; implements :class:`~mosic.data.source.GroundTruth`.

    Holds only a few numbers per object (picklable, small); frames, masks and tracks are
    computed on demand. Frame indices are indices of video frames in [0, num_frames).
    """

    def __init__(self, height: int, width: int, num_frames: int, camera: _Camera,
                 background: _Background, objects: Sequence[_Object]):
        self.height, self.width, self.num_frames = height, width, num_frames
        self._camera = camera
        self._background = background
        self._objects = tuple(objects)

    @property
    def num_objects(self) -> int:
        return len(self._objects)

    @property
    def instance_classes(self) -> np.ndarray:
        """(num_objects + 1,) int64: class id of each instance id (index 0: background, 0)."""
        return np.array([0] + [o.cls for o in self._objects], dtype=np.int64)

    def camera_offset(self, frame_indices: Sequence[int]) -> np.ndarray:
        """(T, 2) float64 camera offset; world (x, y) = frame (x, y) + offset."""
        frames = _as_frames(frame_indices, self.num_frames)
        return np.stack(self._camera.offset(frames), axis=-1)

    def _layers(self, f: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Instance ids of the topmost layer at exact positions; frames f broadcast with x, y."""
        ids = np.zeros(np.broadcast_shapes(np.shape(f), np.shape(x), np.shape(y)), dtype=np.int64)
        for k, obj in enumerate(self._objects):
            ids[obj.inside(*obj.to_local(obj.pose(f, self._camera), x, y))] = k + 1
        return ids

    def _shade(self, frames: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Frames (T,), positions x, y (T, P) or (1, P) -> RGB (T, P, 3) in [0, 1] of the top layer."""
        ids = self._layers(frames[:, None], x, y)
        x, y = np.broadcast_to(x, ids.shape), np.broadcast_to(y, ids.shape)
        rgb = np.empty(ids.shape + (3,))
        sel = ids == 0
        rows = np.nonzero(sel)[0]
        camx, camy = self._camera.offset(frames)
        rgb[sel] = self._background.rgb(x[sel] + camx[rows], y[sel] + camy[rows])
        for k, obj in enumerate(self._objects):
            sel = ids == k + 1
            if sel.any():
                rows = np.nonzero(sel)[0]
                pose = tuple(p[rows] for p in obj.pose(frames, self._camera))
                rgb[sel] = obj.rgb(*obj.to_local(pose, x[sel], y[sel]))
        return rgb

    def _pixel_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """x, y (1, H * W) of every pixel centre, row-major."""
        y, x = np.mgrid[: self.height, : self.width].astype(np.float64)
        return x.reshape(1, -1), y.reshape(1, -1)

    def render(self, frame_indices: Sequence[int]) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB frames (colours evaluated at pixel centres)."""
        frames = _as_frames(frame_indices, self.num_frames)
        rgb = self._shade(frames, *self._pixel_grid())
        return np.rint(rgb * 255.0).astype(np.uint8).reshape(len(frames), self.height, self.width, 3)

    def colours_at(self, frame_indices: Sequence[int], xy: np.ndarray) -> np.ndarray:
        """Exact colour of the topmost layer at continuous positions.

        Args:
            xy: (T, N, 2) (x, y) pixels, row t on frame ``frame_indices[t]``.
        Returns:
            (T, N, 3) float64 RGB in [0, 255]; ``render`` rounds these at pixel centres.
        """
        frames = _as_frames(frame_indices, self.num_frames)
        xy = np.asarray(xy, dtype=np.float64)
        if xy.ndim != 3 or xy.shape[0] != len(frames) or xy.shape[2] != 2:
            raise ValueError(f"xy must be (T={len(frames)}, N, 2), got {xy.shape}")
        return self._shade(frames, xy[..., 0], xy[..., 1]) * 255.0

    def instance_masks(self, frame_indices: Sequence[int]) -> np.ndarray:
        """(T, H, W) int64: 0 background, k >= 1 object k (larger ids in front)."""
        frames = _as_frames(frame_indices, self.num_frames)
        return self._layers(frames[:, None], *self._pixel_grid()).reshape(len(frames), self.height, self.width)

    def class_masks(self, frame_indices: Sequence[int]) -> np.ndarray:
        """(T, H, W) int64 semantic class ids, 0 = background."""
        return self.instance_classes[self.instance_masks(frame_indices)]

    def amodal_masks(self, frame_indices: Sequence[int]) -> np.ndarray:
        """(T, num_objects, H, W) bool: full extent of each object, ignoring occlusion."""
        frames = _as_frames(frame_indices, self.num_frames)
        x, y = self._pixel_grid()
        masks = np.zeros((len(frames), len(self._objects), x.shape[1]), dtype=bool)
        for k, obj in enumerate(self._objects):
            masks[:, k] = obj.inside(*obj.to_local(obj.pose(frames[:, None], self._camera), x, y))
        return masks.reshape(len(frames), len(self._objects), self.height, self.width)

    def tracks(self, frame_indices: Sequence[int], queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ground-truth tracks of query points.

        A query (q, x, y) follows the topmost layer (object or background) at the exact
        position (x, y) of frame ``frame_indices[q]``, fixed in that layer's coordinates.

        Args:
            frame_indices: the video frames of the clip, length T.
            queries: (N, 3) rows (q, x, y), q an integer index into ``frame_indices``.
        Returns:
            xy (T, N, 2) float32 pixels; visible (T, N) bool: inside [-0.5, W - 0.5] x
            [-0.5, H - 0.5] and not covered by an object in front of the tracked layer.
        """
        frames = _as_frames(frame_indices, self.num_frames)
        queries = np.asarray(queries, dtype=np.float64)
        if queries.ndim != 2 or queries.shape[1] != 3:
            raise ValueError(f"queries must be (N, 3) rows (q, x, y), got shape {queries.shape}")
        q = queries[:, 0]
        bad = (q != np.round(q)) | (q < 0) | (q >= len(frames))
        if bad.any():
            raise ValueError(f"query frame indices q must be integers in [0, {len(frames)}), got {q[bad][0]}")
        qf, qx, qy = frames[q.astype(np.int64)], queries[:, 1], queries[:, 2]
        layer = self._layers(qf, qx, qy)  # (N,)

        f = frames[:, None]  # (T, 1)
        x = np.empty((len(frames), len(queries)))
        y = np.empty_like(x)
        bg = layer == 0
        qcamx, qcamy = self._camera.offset(qf[bg])
        camx, camy = self._camera.offset(f)
        x[:, bg] = qx[bg] + qcamx - camx
        y[:, bg] = qy[bg] + qcamy - camy
        for k, obj in enumerate(self._objects):
            sel = layer == k + 1
            if sel.any():
                u, v = obj.to_local(obj.pose(qf[sel], self._camera), qx[sel], qy[sel])
                x[:, sel], y[:, sel] = obj.to_frame(obj.pose(f, self._camera), u, v)

        visible = (x >= -0.5) & (x <= self.width - 0.5) & (y >= -0.5) & (y <= self.height - 0.5)
        for k, obj in enumerate(self._objects):
            behind = layer <= k  # layers under object k
            if behind.any():
                covered = obj.inside(*obj.to_local(obj.pose(f, self._camera), x[:, behind], y[:, behind]))
                visible[:, behind] &= ~covered
        return np.stack([x, y], axis=-1).astype(np.float32), visible


class SyntheticVideos:
    """Procedurally generated videos with exact tracks and masks (a ``VideoSource``).

    Video i is generated from ``numpy.random.default_rng([seed, i])`` alone, lazily on
    every call; the object holds only its arguments (cheap to pickle into workers).

    Args:
        num_videos: number of videos.
        num_frames: frames per video.
        size: frame size, an int (square) or (H, W).
        seed: dataset seed.
        num_classes: semantic classes 1..num_classes (0 is background); classes 1-8 have
            distinct shapes and textures, later ones reuse them with finer textures and
            other colours.
        objects_per_video: an int or an inclusive (min, max) range of objects per video.
        camera_motion: whether the camera drifts (moving the background).
        color_jitter: per-object uniform jitter of the class colours (RGB in [0, 1]).
        speed: scales every motion (object and camera velocities, wobble, spin, size
            pulsing, camera sway); 1 is the default world, 0 a still one. Other values make a world
            configuration to evaluate on that training did not see.
        object_size: (min, max) object radius as a fraction of the shorter side.
    """

    @classmethod
    def from_spec(cls, spec: str) -> "SyntheticVideos":
        """Build from ``"synthetic:num_videos=64,size=64,seed=0"`` (any ``__init__`` integers)."""
        body = spec.split(":", 1)[1] if spec.startswith("synthetic:") else spec
        kwargs = {}
        for item in filter(None, (part.strip() for part in body.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not value.strip().lstrip("-").isdigit():
                raise ValueError(f"bad synthetic spec item {item!r} in {spec!r}; expected key=integer, e.g. num_videos=64")
            kwargs[key.strip()] = int(value)
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ValueError(f"bad synthetic spec {spec!r}: {exc}") from None

    def __init__(self, num_videos: int = 16, num_frames: int = 24, size: int | tuple[int, int] = 64,
                 seed: int = 0, num_classes: int = 4, objects_per_video: int | tuple[int, int] = (2, 4),
                 camera_motion: bool = True, color_jitter: float = 0.15, speed: float = 1.0,
                 object_size: tuple[float, float] = (0.12, 0.25)):
        if num_videos < 0:
            raise ValueError(f"num_videos must be >= 0, got {num_videos}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        size = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be a positive int or (H, W), got {size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        counts = (
            (objects_per_video, objects_per_video)
            if isinstance(objects_per_video, (int, np.integer))
            else tuple(objects_per_video)
        )
        if len(counts) != 2 or not 0 <= counts[0] <= counts[1]:
            raise ValueError(f"objects_per_video must be an int >= 0 or a range (min, max) with 0 <= min <= max, "
                             f"got {objects_per_video}")
        if color_jitter < 0:
            raise ValueError(f"color_jitter must be >= 0, got {color_jitter}")
        self.num_videos = int(num_videos)
        self._num_frames = int(num_frames)
        self.size = (int(size[0]), int(size[1]))
        self.seed = int(seed)
        self.num_classes = int(num_classes)
        self.objects_per_video = (int(counts[0]), int(counts[1]))
        self.camera_motion = bool(camera_motion)
        self.color_jitter = float(color_jitter)
        if not (math.isfinite(speed) and speed >= 0):
            raise ValueError(f"speed must be a finite number >= 0, got {speed}")
        size_range = tuple(float(v) for v in object_size)
        if len(size_range) != 2 or not 0 < size_range[0] <= size_range[1] <= 1:
            raise ValueError(f"object_size must be (min, max) with 0 < min <= max <= 1, got {object_size}")
        self.speed = float(speed)
        self.object_size = size_range

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_videos={self.num_videos}, num_frames={self._num_frames}, size={self.size}, "
            f"seed={self.seed}, num_classes={self.num_classes}, objects_per_video={self.objects_per_video}, "
            f"camera_motion={self.camera_motion}, color_jitter={self.color_jitter}, speed={self.speed}, "
            f"object_size={self.object_size})"
        )

    @property
    def classes(self) -> list[str]:
        """Class names indexed by class id, "background" first."""
        return ["background"] + [_class_name(c) for c in range(1, self.num_classes + 1)]

    def __len__(self) -> int:
        return self.num_videos

    def _check_index(self, index: int) -> int:
        index = operator.index(index)
        if not 0 <= index < self.num_videos:
            raise VideoIndexError(f"video index {index} out of range: valid 0..{self.num_videos - 1}")
        return index

    def video_name(self, index: int) -> str:
        return f"synthetic/seed{self.seed}/{self._check_index(index):05d}"

    def num_frames(self, index: int) -> int:
        self._check_index(index)
        return self._num_frames

    def fps(self, index: int) -> float:
        self._check_index(index)
        return 30.0

    def ground_truth(self, index: int) -> SyntheticScene:
        """The scene of video ``index`` (generated from ``default_rng([seed, index])``)."""
        rng = np.random.default_rng([self.seed, self._check_index(index)])
        height, width = self.size
        s = min(height, width)
        unit = s / 64.0  # speeds are given in pixels per frame at size 64
        motion = self.speed
        t_mid = (self._num_frames - 1) / 2.0

        def direction() -> np.ndarray:
            a = rng.uniform(0.0, 2.0 * math.pi)
            return np.array([math.cos(a), math.sin(a)])

        camera = _Camera(
            t_mid=t_mid,
            velocity=direction() * rng.uniform(0.25, 1.5) * unit * self.camera_motion * motion,
            amplitude=rng.uniform(0.0, 0.04 * s, 2) * self.camera_motion * motion,
            freq=2.0 * math.pi / rng.uniform(16.0, 48.0),
            phase=rng.uniform(0.0, 2.0 * math.pi, 2),
        )
        blob_dirs = rng.uniform(0.0, 2.0 * math.pi, 6)
        detail_dirs = rng.uniform(0.0, 2.0 * math.pi, 4)
        blob_k = 2.0 * math.pi / rng.uniform(0.3 * s, 1.0 * s, 6)
        detail_k = 2.0 * math.pi / rng.uniform(5.0 * unit, 10.0 * unit, 4)
        hues = rng.uniform(0.0, 1.0, 2)
        background = _Background(
            blob_k=np.stack([np.cos(blob_dirs), np.sin(blob_dirs)], axis=1) * blob_k[:, None],
            blob_phase=rng.uniform(0.0, 2.0 * math.pi, 6),
            detail_k=np.stack([np.cos(detail_dirs), np.sin(detail_dirs)], axis=1) * detail_k[:, None],
            detail_phase=rng.uniform(0.0, 2.0 * math.pi, 4),
            colours=np.array([
                colorsys.hsv_to_rgb(hues[0], rng.uniform(0.1, 0.35), rng.uniform(0.55, 0.8)),
                colorsys.hsv_to_rgb(hues[1], rng.uniform(0.1, 0.35), rng.uniform(0.2, 0.45)),
            ]),
        )
        cam_mid = np.stack(camera.offset(t_mid))
        objects = []
        for _ in range(rng.integers(self.objects_per_video[0], self.objects_per_video[1] + 1)):
            cls = int(rng.integers(1, self.num_classes + 1))
            jitter = rng.uniform(-self.color_jitter, self.color_jitter, (2, 3))
            objects.append(_Object(
                cls=cls,
                radius=s * rng.uniform(*self.object_size),
                aspect=rng.uniform(0.6, 1.0),
                colours=np.clip(_class_colours(cls) + jitter, 0.0, 1.0),
                texture_phase=rng.uniform(0.0, 2.0 * math.pi, 2),
                t_mid=t_mid,
                centre=rng.uniform(0.2, 0.8, 2) * np.array([width, height]) + cam_mid,
                velocity=direction() * rng.uniform(0.5, 2.5) * unit * motion,
                wobble_amp=rng.uniform(0.0, 0.04 * s, 2) * motion,
                wobble_freq=2.0 * math.pi / rng.uniform(10.0, 30.0),
                wobble_phase=rng.uniform(0.0, 2.0 * math.pi, 2),
                angle=rng.uniform(0.0, 2.0 * math.pi),
                spin=rng.uniform(-0.06, 0.06) * motion,
                scale_amp=min(rng.uniform(0.0, 0.2) * motion, 0.9),  # the size pulses too; stays > 0
                scale_freq=2.0 * math.pi / rng.uniform(16.0, 48.0),
                scale_phase=rng.uniform(0.0, 2.0 * math.pi),
            ))
        return SyntheticScene(height, width, self._num_frames, camera, background, objects)

    def read_frames(self, index: int, frame_indices: Sequence[int]) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB frames at ``frame_indices``."""
        return self.ground_truth(index).render(frame_indices)

    def __getitem__(self, index: int) -> dict:
        """All frames of video ``index``: {"frames": (T, H, W, 3) uint8, "instance_masks":
        (T, H, W) int64, "class_masks": (T, H, W) int64, "name": str}."""
        scene = self.ground_truth(index)
        frames = range(self._num_frames)
        instances = scene.instance_masks(frames)
        return {
            "frames": scene.render(frames),
            "instance_masks": instances,
            "class_masks": scene.instance_classes[instances],
            "name": self.video_name(index),
        }
