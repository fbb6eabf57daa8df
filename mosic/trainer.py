"""``PostPretrainer``: the MoSiC post-pretraining loop.

One step: track a G x G grid of frame-0 points through each clip (or read cached /
ground-truth tracks), run the EMA teacher on all T frames without grad, run the student
only on the frames the objective reads (frame 0), read features at the track points,
and let the objective turn them into a loss. AdamW, cosine schedule, EMA update,
bf16 autocast on CUDA (Sinkhorn stays fp32), DDP under torchrun with an explicit global
batch, atomic checkpoints and exact resume.
"""

from __future__ import annotations

import copy
import json
import random
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from . import distributed as dist
from .backbones.base import BACKBONES, Backbone
from .checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_module_state,
    optimizer_from_checkpoint,
    optimizer_to_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    update_latest,
)
from .config import ConfigError, RunConfig
from .data.clips import ClipDataset, ClipMeta, collate_clips
from .data.transforms import apply_views
from .device import resolve_device, to_device
from .ema import ema_momentum, ema_update_
from .learner import Learner
from .nonfinite import NonFiniteGuard
from .objectives.base import Objective
from .objectives.composite import build_objective
from .optim import build_optimizer, build_scheduler, parameter_groups
from .trackers.base import TRACKERS, Tracker
from .tracks import Tracks, query_grid

StepCallback = Callable[["PostPretrainer", int, dict], None]


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
        cfg = _as_config(config)
        named: dict[str, Any] = {}
        for section, value in (("backbone", backbone), ("tracker", tracker), ("objective", objective)):
            if value is not None:
                named[f"{section}.name"] = value if isinstance(value, str) else _describe(value)
        if pretrained is not None:
            named["backbone.pretrained"] = str(pretrained) if isinstance(pretrained, Path) else pretrained
        self.config = cfg.with_overrides({**named, **overrides})
        self.device = resolve_device(self.config.train.device)
        dist.init_from_environment(self.device)
        torch.manual_seed(self.config.train.seed)
        random.seed(self.config.train.seed)
        np.random.seed(self.config.train.seed)

        backbone_module = backbone if isinstance(backbone, Backbone) else self._create_backbone()
        backbone_module.set_trainable(self.config.backbone.train_blocks)
        objective_module = objective if isinstance(objective, Objective) else self._create_objective(backbone_module)
        self._tracker: Tracker | None = tracker if isinstance(tracker, Tracker) else None
        if self._tracker is not None:
            self._tracker.to(self.device)

        self.learner = Learner(backbone_module, objective_module).to(self.device)
        if self.config.train.ema:
            self.teacher_learner = _ema_copy(self.learner)
        else:
            self.teacher_learner = self.learner
        self._ema_pairs = [
            (t, s)
            for (_, t), (_, s) in zip(self.teacher_learner.named_parameters(), self.learner.named_parameters())
            if s.requires_grad
        ]
        if self.config.train.compile:
            t = self.config.train
            for learner in {id(m): m for m in (self.learner, self.teacher_learner)}.values():
                learner.backbone.compile(backend=t.compile_backend, mode=t.compile_mode)
        self.step = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.total_steps: int | None = None
        self.history: list[dict] = []
        #: videos skipped because they could not be read: name -> reason
        self.skipped_videos: dict[str, str] = {}

    # ---- public --------------------------------------------------------------------------
    @property
    def student(self) -> Backbone:
        return self.learner.backbone

    @property
    def teacher(self) -> Backbone:
        return self.teacher_learner.backbone

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
        from .data.readers import open_videos

        train = self.config.train
        overrides = {k: v for k, v in (("max_steps", max_steps), ("epochs", epochs)) if v is not None}
        if out_dir is not None:
            overrides["out_dir"] = str(out_dir)
        if overrides:
            self.config = self.config.with_overrides({f"train.{k}": v for k, v in overrides.items()})
            train = self.config.train
        data = self.config.data
        if videos is None:
            if data.videos is None:
                raise ValueError("fit() needs videos, or data.videos in the config")
            videos = data.videos
        elif isinstance(videos, (str, Path)) or (isinstance(videos, list) and all(isinstance(v, (str, Path)) for v in videos)):
            record = str(videos) if isinstance(videos, (str, Path)) else [str(v) for v in videos]
            self.config = self.config.with_overrides({"data.videos": record})
            data = self.config.data
        source = open_videos(videos, backend=data.backend, decode_timeout=data.decode_timeout)
        dataset = ClipDataset(
            source,
            data.num_frames,
            data.stride,
            data.size,
            data.crop_scale,
            data.flip_probability,
            train.seed,
            track_cache=(cache := self._open_track_cache(source)),
            skip_bad_videos=data.skip_bad_videos,
            prepared=self._open_prepared(source, cache),
        )
        world = dist.world_size()
        if data.global_batch_size % world:
            raise ConfigError(
                f"data.global_batch_size={data.global_batch_size} is not divisible by the {world} processes"
            )
        per_rank = data.global_batch_size // world
        _micro_batches(per_rank, train.accumulation_steps)  # fails early when it cannot split
        sampler = _EpochSampler(dataset, num_replicas=world, rank=dist.rank(), seed=train.seed, batch_size=per_rank)
        steps_per_epoch = sampler.steps_per_epoch
        if steps_per_epoch == 0:
            raise ValueError(
                f"{len(dataset)} videos are fewer than one global batch of {data.global_batch_size} clips; "
                "lower data.global_batch_size or add videos"
            )
        total = train.max_steps or train.epochs * steps_per_epoch
        self._prepare_optimizer(total)
        out = Path(train.out_dir) if train.out_dir else None
        if resume:
            checkpoint = self._find_resume_checkpoint(resume, out)
            if checkpoint is not None:
                self._restore(checkpoint, with_optimizer=True)
        if out is not None and dist.is_main_process():
            out.mkdir(parents=True, exist_ok=True)
            self.config.save(out / "config.yaml")
            _truncate_metrics(out / "metrics.jsonl", self.step)  # a killed run logged past its checkpoint

        sampler.start_step = self.step
        loader = DataLoader(
            dataset,
            batch_size=per_rank,
            sampler=sampler,
            num_workers=data.num_workers,
            collate_fn=collate_clips,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),  # the loader's seed draw leaves the global RNG (resumed exactly) alone
        )
        progress = _Progress(enabled=train.progress and dist.is_main_process(), total=total, start=self.step)
        guard = NonFiniteGuard(train.max_nonfinite_steps, out)
        window_start, window_clips = time.perf_counter(), 0
        with progress:
            for batch in loader:
                if self.step >= total:
                    break
                metrics = self.train_step(batch)
                self.step += 1
                guard.push(self.step, metrics["nonfinite"])
                for name, reason in batch.get("skipped", ()):
                    self.skipped_videos.setdefault(name, reason)
                epoch = (self.step - 1) // steps_per_epoch
                window_clips += data.global_batch_size
                last = self.step >= total
                if self.step % train.log_every == 0 or last:
                    elapsed = time.perf_counter() - window_start
                    record = {"step": self.step, "epoch": epoch, **{k: float(v) for k, v in metrics.items()}}
                    record["lr_backbone"], record["lr_head"] = self._current_lrs()
                    record["clips_per_s"] = window_clips / max(elapsed, 1e-9)
                    record["skipped_videos"] = len(self.skipped_videos)
                    self._log(record, out)
                    progress.update(self.step, record)
                    window_start, window_clips = time.perf_counter(), 0
                if out is not None and (self.step % train.checkpoint_every == 0 or last):
                    self.save_checkpoint(out)
                for callback in callbacks:
                    callback(self, self.step, metrics)
                if last:
                    break
        guard.flush()
        self._report_skipped_videos(out)
        return self

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

    @property
    def tracker(self) -> Tracker:
        """The tracker run inside the step; built on first use (never with a track cache)."""
        if self._tracker is None:
            cfg = self.config.tracker
            self._tracker = TRACKERS.create(cfg.name, **cfg.kwargs).to(self.device)
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

    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """One optimisation step on a collated batch; returns detached metric tensors.

        Nothing in the step waits for the GPU: metrics stay tensors (the caller reads
        them at logging intervals), token masks are built and checked on the CPU, and
        host-to-device copies are non-blocking from pinned memory.
        """
        if self.optimizer is None:
            raise RuntimeError("call fit() (or _prepare_optimizer) before train_step")
        frames = to_device(batch["frames"], self.device)  # (B, T, 3, H, W) uint8
        metas = batch["meta"]
        objective = self.learner.objective
        if not objective.uses_tracks:
            tracks = self._static_tracks(frames)
        elif "tracks" in batch:
            tracks = batch["tracks"].to(self.device)
        else:
            tracks = self._tracks_for(frames, metas)
        backbone = self.learner.backbone
        images = backbone.preprocess(frames)
        student_frames = tuple(objective.student_frames)
        views = view_images = None
        if objective.student_view:
            views = objective.sample_views([m.sample_seed for m in metas], frames.shape[-2], frames.shape[-1])
            view_images = apply_views(images[:, 0], views)
        h, w = frames.shape[-2] // backbone.patch_size, frames.shape[-1] // backbone.patch_size
        token_mask = _token_masks(metas, len(student_frames), h, w, self.config.train.mask_ratio)  # CPU

        self.learner.train()
        if self.teacher_learner is not self.learner:
            self.teacher_learner.eval()
        self.optimizer.zero_grad(set_to_none=True)
        student_images = images[:, list(student_frames)]
        score_args = (tracks, self.teacher_learner.objective, student_frames, views)
        accumulation = self.config.train.accumulation_steps
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._use_bf16()):
            with torch.no_grad():
                if accumulation == 1:
                    teacher_tokens = self.teacher_learner.tokens(images)
                else:  # the teacher in micro-batches too: its peak activations shrink alike
                    teacher_tokens = torch.cat([self.teacher_learner.tokens(c) for c in images.chunk(accumulation)])
            if accumulation == 1:
                out = self._student_module()(
                    student_images, token_mask, teacher_tokens, tracks, *score_args[1:3], view_images, views
                )
        if accumulation == 1:
            out.loss.backward()
        else:
            out = self._accumulated_backward(student_images, token_mask, view_images, teacher_tokens, score_args)
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        clip = self.config.optim.grad_clip
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(params, clip)
            if clip is not None
            else torch.nn.utils.get_total_norm([p.grad for p in params])
        )
        # the same decision on every process: the loss metric and the gradients are global
        nonfinite = ~(torch.isfinite(out.metrics["loss"]) & torch.isfinite(grad_norm))
        out.metrics["grad_norm"], out.metrics["nonfinite"] = grad_norm.detach(), nonfinite.float()
        stepped = self._guarded_optimizer_step(nonfinite)
        self.scheduler.step()
        if stepped is False:  # known skipped: the teacher and the prototypes stay as they are
            return out.metrics
        if self.teacher_learner is not self.learner:
            t = self.config.train
            m = ema_momentum(t.ema_momentum, self.step, self.total_steps or 1, t.ema_schedule)
            ema_update_([p for p, _ in self._ema_pairs], [q for _, q in self._ema_pairs], m)
            self.teacher_learner.objective.after_optimizer_step()
        self.learner.objective.after_optimizer_step()
        return out.metrics

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

    def _accumulated_backward(self, student_images, token_mask, view_images, teacher_tokens, score_args):
        """Gradient accumulation that equals the whole-batch step (GradCache).

        1. The student runs on every micro-batch without grad; its tokens are joined.
        2. The objective scores the whole batch (its Sinkhorn and loss normalisation span
           the global batch, as without accumulation); backward stops at the tokens.
        3. Each micro-batch runs the student again, with grad, under the RNG state of its
           first run, and back-propagates its slice of the token gradient.
        The student's backbone activations exist for one micro-batch at a time; the
        extra cost is one no-grad student forward (one frame per clip for MoSiC).
        Under torch.distributed the gradients are then averaged over processes.
        """
        k = self.config.train.accumulation_steps
        chunks = _micro_batches(student_images.shape[0], k)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._use_bf16())
        rng_devices = [self.device] if self.device.type == "cuda" else []
        states, parts = [], []
        with autocast, torch.no_grad():
            for chunk in chunks:
                states.append(_device_rng_state(self.device))
                parts.append(self.learner.student_tokens(*_slice_inputs(chunk, student_images, token_mask, view_images)))
        tokens = torch.cat([p[0] for p in parts]).requires_grad_(True)
        view_tokens = None if parts[0][1] is None else torch.cat([p[1] for p in parts]).requires_grad_(True)
        with autocast:
            out = self.learner.score(tokens, view_tokens, token_mask, teacher_tokens, *score_args)
        out.loss.backward()
        for chunk, state in zip(chunks, states):
            with torch.random.fork_rng(devices=rng_devices), autocast:
                _set_device_rng_state(self.device, state)
                part_tokens, part_view = self.learner.student_tokens(
                    *_slice_inputs(chunk, student_images, token_mask, view_images)
                )
            outputs, grads = [part_tokens], [tokens.grad[chunk]]
            if part_view is not None:
                outputs.append(part_view)
                grads.append(view_tokens.grad[chunk])
            torch.autograd.backward(outputs, grads)
        if dist.is_distributed():
            dist.average_gradients([p for p in self.learner.parameters() if p.requires_grad])
        return out

    # ---- saving and loading ----------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"student.{k}": v for k, v in self.learner.state_dict().items()}
        if self.teacher_learner is not self.learner:
            tensors.update({f"teacher.{k}": v for k, v in self.teacher_learner.state_dict().items()})
        return tensors

    def save(self, path: str | Path) -> Path:
        """Write weights, optimizer, schedule, RNG and config to the folder ``path`` atomically."""
        tensors = self.state_tensors()
        state: dict[str, Any] = {"step": self.step, "total_steps": self.total_steps}
        if self.optimizer is not None:
            opt_tensors, opt_meta = optimizer_to_checkpoint(self.optimizer)
            tensors.update(opt_tensors)
            state["optimizer"] = opt_meta
            state["scheduler"] = self.scheduler.state_dict()
        rng_tensors, state["rng"] = _rng_state()
        tensors.update(rng_tensors)
        return save_checkpoint(path, tensors, state, self.config.to_yaml())

    def save_checkpoint(self, run_dir: Path) -> None:
        """Rank 0 writes ``run_dir/checkpoints/step_N``; every process must call this
        (a sharded optimizer first gathers its moments on rank 0)."""
        if hasattr(self.optimizer, "consolidate_state_dict"):
            self.optimizer.consolidate_state_dict(to=0)
        if not dist.is_main_process():
            return
        checkpoints = run_dir / "checkpoints"
        name = f"step_{self.step:07d}"
        self.save(checkpoints / name)
        update_latest(checkpoints, name, self.config.train.keep_checkpoints)

    @staticmethod
    def _find_resume_checkpoint(resume: bool | str | Path, out: Path | None) -> Path | None:
        """The checkpoint to resume from; None when ``resume=True`` finds nothing yet."""
        if not isinstance(resume, bool):
            return resolve_checkpoint(resume)
        if out is None:
            raise ValueError("resume=True needs out_dir (or pass the checkpoint path as resume=...)")
        return latest_checkpoint(out)

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
        trainer._restore(path, with_optimizer=False)
        return trainer

    def _restore(self, path: Path, with_optimizer: bool) -> None:
        tensors, state, _ = load_checkpoint(path)
        _load_prefixed(self.learner, tensors, "student.", path)
        if self.teacher_learner is not self.learner:
            _load_prefixed(self.teacher_learner, tensors, "teacher.", path)
        self.step = int(state["step"])
        if with_optimizer and self.optimizer is not None and "optimizer" in state:
            self.optimizer.load_state_dict(optimizer_from_checkpoint(tensors, state["optimizer"]))
            self.scheduler.load_state_dict(state["scheduler"])
            _set_rng_state(tensors, state["rng"])

    # ---- internals -------------------------------------------------------------------------
    def _open_track_cache(self, source):
        cfg = self.config.tracker
        if cfg.cache is None:
            return None
        from .data.track_cache import TrackCache
        from .trackers.cache import weights_digest

        expect = {
            "tracker": cfg.name,
            "num_frames": self.config.data.num_frames,
            "frame_stride": self.config.data.stride,
        }
        if isinstance(cfg.kwargs.get("weights"), str):
            expect["weights"] = weights_digest(cfg.kwargs["weights"])
        cache = TrackCache(cfg.cache, source, expect)
        self._check_planned_starts(cache)
        return cache

    def _open_prepared(self, source, cache):
        """The run's prepared frames (``data.prepared``), checked against its settings and videos
        (and the track cache's start lattice) before training; None without."""
        data = self.config.data
        if data.prepared is None:
            return None
        from .data.prepared import PreparedFrames, StalePreparedError, default_short_side

        expect = {"num_frames": data.num_frames, "frame_stride": data.stride}
        if cache is not None:
            expect["start_step"] = cache.settings.start_step
        try:
            prepared = PreparedFrames(data.prepared, source, expect)
        except StalePreparedError as error:
            raise StalePreparedError(f"data.prepared: {error}") from None
        import warnings

        wanted = default_short_side(data.size, data.crop_scale)
        shrunk = any("error" not in e and min(e["height"], e["width"]) > prepared.settings.short_side for e in prepared.videos)
        if prepared.settings.short_side < wanted and shrunk:
            warnings.warn(
                f"data.prepared: the frames at {prepared.path} were stored with a shorter side of "
                f"{prepared.settings.short_side} px; data.size={data.size} with crop_scale {data.crop_scale} wants "
                f"{wanted} px, so small crops are upscaled (re-run `mosic prepare` with --short-side {wanted})",
                stacklevel=3,
            )
        return prepared

    def _check_planned_starts(self, cache) -> None:
        """Fail before training when the cache lacks a start this run will read (a cache
        planned for other runs: ``mosic track --for-run``)."""
        from .data.track_cache import StaleCacheError, planned_starts_for_run

        counts = [None if "error" in e else e["num_frames"] for e in cache.videos]
        plan = planned_starts_for_run(self.config, counts, cache.settings.start_step)
        missing = cache.missing_starts(plan)
        if missing:
            total = sum(map(len, missing.values()))
            example = ", ".join(f"{name}: {starts[:3]}" for name, starts in list(missing.items())[:3])
            raise StaleCacheError(
                f"the track cache at {cache.path} lacks {total} clip starts of {len(missing)} videos that this run "
                f"reads ({example}{', ...' if len(missing) > 3 else ''}): it was planned for other runs. Add them with "
                "`mosic track VIDEOS --out CACHE --for-run CONFIG` (this run's config; only the missing starts are "
                "tracked), or track every start without --for-run"
            )

    def _create_backbone(self) -> Backbone:
        cfg = self.config.backbone
        source = {} if cfg.source is None else {"source": cfg.source}
        return BACKBONES.create(cfg.name, pretrained=cfg.pretrained, **source, **cfg.kwargs)

    def _create_objective(self, backbone: Backbone) -> Objective:
        cfg = self.config.objective
        fields = cfg.model_dump(exclude={"name", "kwargs"})
        return build_objective(cfg.name, backbone.embed_dim, fields, cfg.kwargs)

    def _prepare_optimizer(self, total_steps: int) -> None:
        if self.optimizer is not None and self.total_steps == total_steps:
            return
        groups = parameter_groups(self.learner.backbone, self.learner.objective, self.config.optim)
        shard = self.config.train.shard_optimizer and dist.is_distributed()
        self.optimizer = build_optimizer(groups, self.config.optim, self.device, shard=shard)
        self.scheduler = build_scheduler(self.optimizer, total_steps, self.config.optim)
        self.total_steps = total_steps
        if dist.is_distributed() and not hasattr(self, "_ddp"):
            if self.config.train.accumulation_steps == 1:
                from torch.nn.parallel import DistributedDataParallel

                self._ddp = DistributedDataParallel(self.learner)
            else:  # gradients are averaged by hand after the micro-batches (see _accumulated_backward)
                dist.broadcast_module(self.learner)
                self._ddp = self.learner

    def _student_module(self) -> torch.nn.Module:
        return getattr(self, "_ddp", self.learner)

    def _use_bf16(self) -> bool:
        precision = self.config.train.precision
        return precision == "bf16" or (precision == "auto" and self.device.type == "cuda")

    def _current_lrs(self) -> tuple[float, float]:
        lrs = {g.get("name", ""): g["lr"] for g in self.optimizer.param_groups}
        return lrs.get("backbone", lrs.get("backbone_no_decay", 0.0)), lrs.get("head", lrs.get("head_no_decay", 0.0))

    def _log(self, record: dict, out: Path | None) -> None:
        self.history.append(record)
        if out is not None and dist.is_main_process():
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")


class _EpochSampler(DistributedSampler):
    """Endless (epoch, index) stream for one process, starting at any global step.

    Each epoch is DistributedSampler's seeded permutation, sharded by rank and cut to
    whole batches, so item k of step s is the same whatever the worker count and
    resume point. One DataLoader iterates all epochs (no worker restarts).
    """

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int, batch_size: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.batch_size = batch_size
        self.steps_per_epoch = self.num_samples // batch_size
        self.start_step = 0

    def __iter__(self):
        if self.steps_per_epoch == 0:
            return
        epoch, skip = divmod(self.start_step, self.steps_per_epoch)
        while True:
            self.set_epoch(epoch)
            indices = list(super().__iter__())[: self.steps_per_epoch * self.batch_size]
            for index in indices[skip * self.batch_size :]:
                yield (epoch, index)
            epoch, skip = epoch + 1, 0

    def __len__(self) -> int:
        return self.steps_per_epoch * self.batch_size


class _Progress:
    """rich progress bar with loss, throughput and ETA; silent when disabled."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.enabled = enabled
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]mosic[/bold]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[speed]} clips/s"),
                TimeRemainingColumn(),
            )
            self._task = self._bar.add_task("fit", total=total, completed=start, loss="-", speed="-")

    def __enter__(self):
        if self.enabled:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._bar.__exit__(*exc)

    def update(self, step: int, record: dict) -> None:
        if self.enabled:
            self._bar.update(
                self._task, completed=step, loss=f"{record['loss']:.4f}", speed=f"{record['clips_per_s']:.1f}"
            )


def _token_masks(metas: Sequence[ClipMeta], frames: int, h: int, w: int, ratio: float) -> torch.Tensor | None:
    """(B, S, h, w) bool, True = drop; one random mask per clip from its sample seed,
    shared by its S student frames (the paper masks all frames alike)."""
    count = int(round(ratio * h * w))
    if count == 0:
        return None
    masks = torch.zeros(len(metas), h * w, dtype=torch.bool)
    for i, meta in enumerate(metas):
        generator = torch.Generator().manual_seed(meta.sample_seed ^ 0x5EED)
        masks[i, torch.randperm(h * w, generator=generator)[:count]] = True
    return masks.view(len(metas), 1, h, w).expand(-1, frames, -1, -1)


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the records of steps <= ``step`` (atomically): resumed steps are logged again."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
    if len(kept) == len(lines):
        return
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


def _ema_copy(learner: Learner) -> Learner:
    """The teacher: a copy of ``learner`` without grad whose frozen parameters *are* the
    student's (the EMA never changes them), so frozen blocks are held once in memory."""
    teacher = copy.deepcopy(learner).requires_grad_(False)
    student_params = dict(learner.named_parameters())
    for name, module in teacher.named_modules():
        for key, param in list(module._parameters.items()):
            source = student_params.get(f"{name}.{key}" if name else key)
            if param is not None and source is not None and not source.requires_grad:
                module._parameters[key] = source
    return teacher


def _micro_batches(batch: int, k: int) -> list[slice]:
    """``k`` contiguous slices of a batch of ``batch`` clips (sizes differ by at most one)."""
    if k > batch:
        raise ConfigError(f"train.accumulation_steps={k} exceeds the {batch} clips each process gets per step")
    bounds = [round(i * batch / k) for i in range(k + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _slice_inputs(chunk: slice, images: torch.Tensor, token_mask, view_images):
    return (
        images[chunk],
        None if token_mask is None else token_mask[chunk],
        None if view_images is None else view_images[chunk],
    )


def _device_rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_device_rng_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


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


def _load_prefixed(module: torch.nn.Module, tensors: dict, prefix: str, source: Path) -> None:
    load_module_state(module, tensors, prefix, source)


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    meta = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, meta


def _set_rng_state(tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
