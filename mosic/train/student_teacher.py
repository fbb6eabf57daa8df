"""The student and its EMA teacher: one home for the teacher copy, the EMA and the
forward/backward of a step (with exact gradient accumulation)."""

from __future__ import annotations

import copy
import math
from contextlib import AbstractContextManager
from typing import Sequence

import torch

from .. import distributed as dist
from ..objectives.base import ObjectiveOutput
from .inputs import StepInputs, micro_batches
from .learner import Learner


class StudentTeacher:
    """A student :class:`Learner` and its teacher.

    With ``ema=True`` the teacher is an EMA copy without grad whose *frozen* parameters are
    the student's own tensors (the EMA never changes them, so frozen blocks are held once
    in memory); ``pairs`` are the (teacher, student) trainable parameters the EMA moves.
    With ``ema=False`` the teacher is the student.
    """

    def __init__(self, student: Learner, ema: bool = True):
        self.student = student
        self.teacher = teacher_copy(student) if ema else student
        self.pairs: list[tuple[torch.nn.Parameter, torch.nn.Parameter]] = [
            (t, s)
            for (_, t), (_, s) in zip(self.teacher.named_parameters(), student.named_parameters())
            if s.requires_grad
        ]
        self._student_call: torch.nn.Module = student  # DistributedDataParallel(student) once distributed

    @property
    def has_ema(self) -> bool:
        return self.teacher is not self.student

    def learners(self) -> list[Learner]:
        """The distinct learners (one without EMA)."""
        return [self.student, self.teacher] if self.has_ema else [self.student]

    def compile(self, backend: str, mode: str | None) -> None:
        for learner in self.learners():
            learner.backbone.compile(backend=backend, mode=mode)

    def distribute(self, accumulation_steps: int) -> None:
        """Under torch.distributed: wrap the student in DDP, or (with accumulation, whose
        gradients are averaged by hand after the micro-batches) broadcast rank 0's weights."""
        if not dist.is_distributed() or self._student_call is not self.student:
            return
        if accumulation_steps == 1:
            from torch.nn.parallel import DistributedDataParallel

            self._student_call = DistributedDataParallel(self.student)
        else:
            dist.broadcast_module(self.student)

    def train(self) -> None:
        self.student.train()
        if self.has_ema:
            self.teacher.eval()

    # ---- the step ------------------------------------------------------------------------
    def forward_backward(
        self, inputs: StepInputs, accumulation_steps: int, autocast: AbstractContextManager
    ) -> ObjectiveOutput:
        """The teacher's tokens of all T frames (no grad), the student's loss, and its
        backward; returns the objective's output. ``autocast`` is a reusable autocast
        context (bf16 on CUDA); the objective keeps Sinkhorn in fp32 inside it."""
        with autocast:
            with torch.no_grad():
                if accumulation_steps == 1:
                    teacher_tokens = self.teacher.tokens(inputs.images)
                else:  # the teacher in micro-batches too: its peak activations shrink alike
                    teacher_tokens = torch.cat([self.teacher.tokens(c) for c in inputs.images.chunk(accumulation_steps)])
            if accumulation_steps == 1:
                out = self._student_call(inputs, teacher_tokens, self.teacher.objective)
        if accumulation_steps > 1:
            return self._accumulated_backward(inputs, teacher_tokens, accumulation_steps, autocast)
        out.loss.backward()
        return out

    def _accumulated_backward(
        self, inputs: StepInputs, teacher_tokens: torch.Tensor, k: int, autocast: AbstractContextManager
    ) -> ObjectiveOutput:
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
        device = inputs.student_images.device
        chunks = micro_batches(inputs.student_images.shape[0], k)
        states, parts = [], []
        with autocast, torch.no_grad():
            for chunk in chunks:
                states.append(_device_rng_state(device))
                parts.append(self.student.student_tokens(inputs.micro_batch(chunk)))
        tokens = torch.cat([p[0] for p in parts]).requires_grad_(True)
        view_tokens = None if parts[0][1] is None else torch.cat([p[1] for p in parts]).requires_grad_(True)
        with autocast:
            out = self.student.score(tokens, view_tokens, inputs, teacher_tokens, self.teacher.objective)
        out.loss.backward()
        for chunk, state in zip(chunks, states):
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast:
                _set_device_rng_state(device, state)
                part_tokens, part_view = self.student.student_tokens(inputs.micro_batch(chunk))
            outputs, grads = [part_tokens], [tokens.grad[chunk]]
            if part_view is not None:
                outputs.append(part_view)
                grads.append(view_tokens.grad[chunk])
            torch.autograd.backward(outputs, grads)
        if dist.is_distributed():
            dist.average_gradients([p for p in self.student.parameters() if p.requires_grad])
        return out

    # ---- after the optimizer step ----------------------------------------------------------
    def update_teacher(self, momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student over the trainable
        parameters, then the teacher objective's own update (e.g. prototype renormalising)."""
        if self.has_ema:
            ema_update_([t for t, _ in self.pairs], [s for _, s in self.pairs], momentum)
            self.teacher.objective.after_optimizer_step()

    def after_optimizer_step(self, momentum: float) -> None:
        """After a taken optimizer step: the EMA, then the student objective's update."""
        self.update_teacher(momentum)
        self.student.objective.after_optimizer_step()

    # ---- checkpoints -------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """``student.*`` and (with EMA) ``teacher.*`` tensors, the checkpoint's key format."""
        tensors = {f"student.{k}": v for k, v in self.student.state_dict().items()}
        if self.has_ema:
            tensors.update({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()})
        return tensors


def teacher_copy(learner: Learner) -> Learner:
    """A copy of ``learner`` without grad whose frozen parameters *are* the learner's."""
    teacher = copy.deepcopy(learner).requires_grad_(False)
    student_params = dict(learner.named_parameters())
    for name, module in teacher.named_modules():
        for key, param in list(module._parameters.items()):
            source = student_params.get(f"{name}.{key}" if name else key)
            if param is not None and source is not None and not source.requires_grad:
                module._parameters[key] = source
    return teacher


@torch.no_grad()
def ema_update_(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor], momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, fused with ``_foreach_lerp_``."""
    if teacher:
        torch._foreach_lerp_(list(teacher), list(student), 1.0 - momentum)


def ema_momentum(base: float, step: int, total_steps: int, schedule: str = "constant") -> float:
    """Momentum at ``step``: constant, or cosine from ``base`` to 1 (as in DINO)."""
    if schedule == "constant" or total_steps <= 1:
        return base
    progress = min(step / (total_steps - 1), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def _device_rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_device_rng_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)

