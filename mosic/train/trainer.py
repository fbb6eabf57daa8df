"""``PostPretrainer``: the MoSiC post-pretraining loop.

One step: track a G x G grid of frame-0 points through each clip (or read cached /
ground-truth tracks), run the EMA teacher on all T frames without grad, run the student
only on the frames the objective reads (frame 0), read features at the track points,
and let the objective turn them into a loss. AdamW, cosine schedule, EMA update,
bf16 autocast on CUDA (Sinkhorn stays fp32), DDP under torchrun with an explicit global
batch, atomic checkpoints and exact resume.

The parts live beside this file: :mod:`.student_teacher` (the EMA teacher and the
forward/backward), :mod:`.inputs` (a step's inputs), :mod:`.state` (save, restore, RNG),
:mod:`.data` (clips, sampler, loader), :mod:`.progress` (progress bar, metrics log).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .. import distributed as dist
from ..backbones.base import Backbone
from ..checkpoint import load_checkpoint, resolve_checkpoint
from ..config import RunConfig
from ..data.clips import ClipMeta
from ..data.transforms import apply_views
from ..device import resolve_device, to_device
from ..objectives.base import Objective
from ..trackers.base import Tracker
from ..tracks import Tracks, query_grid
from .components import build_backbone, build_run_objective, build_tracker, set_trainable
from .data import open_training_data
from .inputs import StepInputs, token_masks
from .learner import Learner
from .nonfinite import NonFiniteGuard
from .optim import build_optimizer, build_scheduler, parameter_groups
from .progress import MetricsLog, Progress, Throughput
from .state import TrainState, find_resume_checkpoint
from .student_teacher import StudentTeacher, ema_momentum

StepCallback = Callable[["PostPretrainer", int, dict], None]


def _state_field(name: str, doc: str) -> property:
    """A trainer attribute that is the train state's field ``name``."""
    return property(lambda self: getattr(self.state, name), lambda self, v: setattr(self.state, name, v), doc=doc)


class PostPretrainer:
    """Post-pretrain a backbone on videos with motion.

    Args:
        backbone: registered name or a :class:`~mosic.backbones.Backbone` instance
            (default: the config's, ``dinov2-s14``).
        tracker: registered name or a :class:`~mosic.trackers.Tracker` instance.
        objective: registered name or an :class:`~mosic.objectives.Objective` instance.
        pretrained: True (hub download), False (random init) or a local weights path.
        config: a :class:`RunConfig`, a dict, a YAML/JSON path or a preset name
            (``"dinov2-s14"``, see ``mosic list presets``).
        **overrides: config fields by name (``max_steps=100``, ``global_batch_size=8``,
            ``"optim.head_lr": 1e-3``).

    After :meth:`fit`, ``student`` and ``teacher`` are the trained backbones (the teacher
    is the one to evaluate and export).
    """

    def __init__(
        self,
        backbone: str | Backbone | None = None,
        tracker: str | Tracker | None = None,
        objective: str | Objective | None = None,
        pretrained: bool | str | None = None,
        config: RunConfig | dict | str | Path | None = None,
        **overrides: Any,
    ):
        named: dict[str, Any] = {}
        for section, value in (("backbone", backbone), ("tracker", tracker), ("objective", objective)):
            if value is not None:
                named[f"{section}.name"] = value if isinstance(value, str) else _describe(value)
        if pretrained is not None:
            named["backbone.pretrained"] = str(pretrained) if isinstance(pretrained, Path) else pretrained
        self.config = _as_config(config).with_overrides({**named, **overrides})
        self.device = resolve_device(self.config.train.device)
        dist.init_from_environment(self.device)
        _seed_everything(self.config.train.seed)

        backbone_module = backbone if isinstance(backbone, Backbone) else build_backbone(self.config.backbone)
        set_trainable(backbone_module, self.config.backbone)
        if not isinstance(objective, Objective):
            objective = build_run_objective(self.config.objective, backbone_module)
        self._tracker: Tracker | None = tracker.to(self.device) if isinstance(tracker, Tracker) else None
        self.model = StudentTeacher(Learner(backbone_module, objective).to(self.device), ema=self.config.train.ema)
        if self.config.train.compile:
            self.model.compile(self.config.train.compile_backend, self.config.train.compile_mode)
        self.state = TrainState(self.model)
        self.history: list[dict] = []
        #: videos skipped because they could not be read: name -> reason
        self.skipped_videos: dict[str, str] = {}

    # ---- the run -------------------------------------------------------------------------
    def fit(
        self,
        videos: Any = None,
        max_steps: int | None = None,
        epochs: int | None = None,
        out_dir: str | Path | None = None,
        resume: bool | str | Path = False,
        callbacks: Sequence[StepCallback] = (),
    ) -> "PostPretrainer":
        """Train on ``videos``: a folder of video files, a folder of frame folders
        (YouTube-VOS/DAVIS ``JPEGImages`` layout), a list of paths, or a dataset object
        such as :class:`mosic.data.SyntheticVideos`; None uses ``data.videos`` of the config.

        ``resume=True`` continues from the newest checkpoint in ``out_dir`` (a path
        names a checkpoint); the result equals an uninterrupted run. ``callbacks`` are
        called as ``callback(trainer, step, metrics)`` after every step.
        """
        videos = self._apply_fit_arguments(videos, max_steps, epochs, out_dir)
        train = self.config.train
        data = open_training_data(self.config, videos)
        total = train.max_steps or train.epochs * data.steps_per_epoch
        self._prepare_optimizer(total)
        out = Path(train.out_dir) if train.out_dir else None
        if resume and (checkpoint := find_resume_checkpoint(resume, out)) is not None:
            self.state.restore(checkpoint, with_optimizer=True)
        log = MetricsLog(self.history, out, dist.is_main_process())
        if out is not None and dist.is_main_process():
            out.mkdir(parents=True, exist_ok=True)
            self.config.save(out / "config.yaml")
            log.truncate(self.step)  # a killed run logged past its checkpoint
        guard = NonFiniteGuard(train.max_nonfinite_steps, out)
        throughput = Throughput()
        with Progress(train.progress and dist.is_main_process(), total, self.step) as progress:
            for batch in data.loader(self.step, pin_memory=self.device.type == "cuda"):
                if self.step >= total:
                    break
                metrics = self.train_step(batch)
                self.step += 1
                guard.push(self.step, metrics["nonfinite"])
                for name, reason in batch.get("skipped", ()):
                    self.skipped_videos.setdefault(name, reason)
                throughput.add(self.config.data.global_batch_size)
                last = self.step >= total
                if self.step % train.log_every == 0 or last:
                    epoch = (self.step - 1) // data.steps_per_epoch
                    progress.update(self.step, log.write(self._record(metrics, epoch, throughput.rate())))
                if out is not None and (self.step % train.checkpoint_every == 0 or last):
                    self.save_checkpoint(out)
                for callback in callbacks:
                    callback(self, self.step, metrics)
                if last:
                    break
        guard.flush()
        self._report_skipped_videos(out)
        return self

    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """One optimisation step on a collated batch; returns detached metric tensors.

        Nothing in the step waits for the GPU: metrics stay tensors (the caller reads
        them at logging intervals), token masks are built and checked on the CPU, and
        host-to-device copies are non-blocking from pinned memory.
        """
        if self.optimizer is None:
            raise RuntimeError("call fit() (or _prepare_optimizer) before train_step")
        inputs = self._step_inputs(batch)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        out = self.model.forward_backward(inputs, self.config.train.accumulation_steps, self._autocast())
        grad_norm = self._clip_gradients()
        # the same decision on every process: the loss metric and the gradients are global
        nonfinite = ~(torch.isfinite(out.metrics["loss"]) & torch.isfinite(grad_norm))
        out.metrics["grad_norm"], out.metrics["nonfinite"] = grad_norm.detach(), nonfinite.float()
        stepped = self._guarded_optimizer_step(nonfinite)
        self.scheduler.step()
        if stepped is not False:  # known skipped: the teacher and the prototypes stay as they are
            t = self.config.train
            self.model.after_optimizer_step(ema_momentum(t.ema_momentum, self.step, self.total_steps or 1, t.ema_schedule))
        return out.metrics

    # ---- the parts of a step ---------------------------------------------------------------
    def _step_inputs(self, batch: dict) -> StepInputs:
        frames = to_device(batch["frames"], self.device)  # (B, T, 3, H, W) uint8
        metas: list[ClipMeta] = batch["meta"]
        objective, backbone = self.learner.objective, self.learner.backbone
        if not objective.uses_tracks:
            tracks = self._static_tracks(frames)
        elif "tracks" in batch:
            tracks = batch["tracks"].to(self.device)
        else:
            tracks = self._tracks_for(frames, metas)
        images = backbone.preprocess(frames)
        student_frames = tuple(objective.student_frames)
        views = view_images = None
        if objective.student_view:
            views = objective.sample_views([m.sample_seed for m in metas], frames.shape[-2], frames.shape[-1])
            view_images = apply_views(images[:, 0], views)
        h, w = frames.shape[-2] // backbone.patch_size, frames.shape[-1] // backbone.patch_size
        mask = token_masks(metas, len(student_frames), h, w, self.config.train.mask_ratio)  # on the CPU
        return StepInputs(images, tracks, student_frames, images[:, list(student_frames)], mask, views, view_images)

    @property
    def tracker(self) -> Tracker:
        """The tracker run inside the step; built on first use (never with a track cache)."""
        if self._tracker is None:
            self._tracker = build_tracker(self.config.tracker).to(self.device)
        return self._tracker

    @torch.no_grad()
    def _tracks_for(self, frames: torch.Tensor, metas: list[ClipMeta]) -> Tracks:
        b, _, _, h, w = frames.shape
        queries = query_grid(h, w, self.config.tracker.grid_size).to(self.device).expand(b, -1, -1)
        return self.tracker(frames, queries, clips=metas).to(self.device)

    def _static_tracks(self, frames: torch.Tensor) -> Tracks:
        """The query grid held still and visible in every frame (objectives that read no tracks)."""
        b, t, _, h, w = frames.shape
        grid = query_grid(h, w, self.config.tracker.grid_size).to(self.device)[:, 1:]  # (N, 2) (x, y)
        return Tracks.still(grid.expand(b, -1, -1), t)

    def _clip_gradients(self) -> torch.Tensor:
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        clip = self.config.optim.grad_clip
        if clip is not None:
            return torch.nn.utils.clip_grad_norm_(params, clip)
        return torch.nn.utils.get_total_norm([p.grad for p in params])

    def _guarded_optimizer_step(self, nonfinite: torch.Tensor) -> bool | None:
        """The optimizer step, skipped when the loss or a gradient is not finite.

        Fused AdamW (CUDA) skips on the device (its ``found_inf`` input, as under AMP's
        grad scaler), so the host never waits; it returns None (not known on the host),
        and the EMA then moves the teacher toward the unchanged student. Other
        optimizers read the flag on the host and return whether they stepped.
        """
        fused = self.optimizer.defaults.get("fused") and not hasattr(self.optimizer, "consolidate_state_dict")
        if fused:
            self.optimizer.found_inf = nonfinite.float()
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf
            return None
        if bool(nonfinite):
            return False
        self.optimizer.step()
        return True

    def _autocast(self) -> torch.autocast:
        precision = self.config.train.precision
        bf16 = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

    def _prepare_optimizer(self, total_steps: int) -> None:
        """AdamW and its schedule for ``total_steps``; under torch.distributed also the DDP
        wrapper (once). Called by :meth:`fit`; tests call it to drive :meth:`train_step`."""
        if self.optimizer is not None and self.total_steps == total_steps:
            return
        groups = parameter_groups(self.learner.backbone, self.learner.objective, self.config.optim)
        shard = self.config.train.shard_optimizer and dist.is_distributed()
        self.state.optimizer = build_optimizer(groups, self.config.optim, self.device, shard=shard)
        self.state.scheduler = build_scheduler(self.optimizer, total_steps, self.config.optim)
        self.state.total_steps = total_steps
        self.model.distribute(self.config.train.accumulation_steps)

    # ---- reporting -----------------------------------------------------------------------
    def _apply_fit_arguments(self, videos: Any, max_steps, epochs, out_dir) -> Any:
        """Fold fit()'s arguments into the config (which the checkpoints save); the videos."""
        overrides = {k: v for k, v in (("max_steps", max_steps), ("epochs", epochs)) if v is not None}
        if out_dir is not None:
            overrides["out_dir"] = str(out_dir)
        if overrides:
            self.config = self.config.with_overrides({f"train.{k}": v for k, v in overrides.items()})
        if videos is None:
            if self.config.data.videos is None:
                raise ValueError("fit() needs videos, or data.videos in the config")
            return self.config.data.videos
        if isinstance(videos, (str, Path)) or (isinstance(videos, list) and all(isinstance(v, (str, Path)) for v in videos)):
            record = str(videos) if isinstance(videos, (str, Path)) else [str(v) for v in videos]
            self.config = self.config.with_overrides({"data.videos": record})
        return videos

    def _record(self, metrics: dict, epoch: int, clips_per_s: float) -> dict:
        record = {"step": self.step, "epoch": epoch, **{k: float(v) for k, v in metrics.items()}}
        lrs = {g.get("name", ""): g["lr"] for g in self.optimizer.param_groups}
        record["lr_backbone"] = lrs.get("backbone", lrs.get("backbone_no_decay", 0.0))
        record["lr_head"] = lrs.get("head", lrs.get("head_no_decay", 0.0))
        record["clips_per_s"] = clips_per_s
        record["skipped_videos"] = len(self.skipped_videos)
        return record

    def _report_skipped_videos(self, out: Path | None) -> None:
        """One summary of every video skipped by any process (rank 0 prints it and
        writes ``skipped_videos.json`` into the run folder)."""
        skipped: dict[str, str] = {}
        for part in dist.all_gather_object(self.skipped_videos):
            skipped.update(part)
        self.skipped_videos = skipped
        if not skipped or not dist.is_main_process():
            return
        lines = "\n".join(f"  {name}: {reason}" for name, reason in sorted(skipped.items())[:20])
        more = f"\n  ... and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        where = ""
        if out is not None:
            (out / "skipped_videos.json").write_text(json.dumps(skipped, indent=1, sort_keys=True))
            where = f" (all of them in {out / 'skipped_videos.json'})"
        print(f"mosic: {len(skipped)} unreadable videos were skipped{where}:\n{lines}{more}", flush=True)

    # ---- state -------------------------------------------------------------------------------
    @property
    def learner(self) -> Learner:
        """The student: backbone and objective head(s)."""
        return self.model.student

    @property
    def teacher_learner(self) -> Learner:
        """The EMA teacher (the student itself with ``train.ema=False``)."""
        return self.model.teacher

    @property
    def student(self) -> Backbone:
        return self.learner.backbone

    @property
    def teacher(self) -> Backbone:
        return self.teacher_learner.backbone

    step = _state_field("step", "steps taken")
    optimizer = _state_field("optimizer", "AdamW (None before fit)")
    scheduler = _state_field("scheduler", "the learning-rate schedule")
    total_steps = _state_field("total_steps", "the schedule's length")

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return self.state.tensors()

    def save(self, path: str | Path) -> Path:
        """Write weights, optimizer, schedule, RNG and config to the folder ``path`` atomically."""
        return self.state.save(path, self.config.to_yaml())

    def save_checkpoint(self, run_dir: Path) -> None:
        """Rank 0 writes ``run_dir/checkpoints/step_N``; every process must call this
        (a sharded optimizer first gathers its moments on rank 0)."""
        self.state.save_checkpoint(run_dir, self.config.to_yaml(), self.config.train.keep_checkpoints)

    @classmethod
    def load(cls, path: str | Path, **components: Any) -> "PostPretrainer":
        """Rebuild a trainer from a checkpoint folder (or a run folder's latest).

        The backbone is built without downloading weights, then every tensor is loaded
        strictly. Pass ``backbone=``/``tracker=``/``objective=`` instances for components
        that were not created from the registry.
        """
        path = resolve_checkpoint(path)
        _, _, config_yaml = load_checkpoint(path)
        config = RunConfig.from_yaml(config_yaml, f"{path}/config.yaml").with_overrides({"backbone.pretrained": False})
        trainer = cls(config=config, **components)
        trainer.state.restore(path, with_optimizer=False)
        return trainer


def _as_config(config: RunConfig | dict | str | Path | None) -> RunConfig:
    if config is None:
        return RunConfig()
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, dict):
        return RunConfig.from_dict(config)
    return RunConfig.load(config)


def _describe(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
