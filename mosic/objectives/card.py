"""Typed objective cards: what a registered objective name computes and what it needs.

Every built-in objective is registered with an :class:`ObjectiveCard`
(``mosic.OBJECTIVES.card(name)``, printed by ``mosic list objectives -v``); the cards
themselves live in :mod:`mosic.objectives.catalog`. ``uses_tracks``, ``student_frames``
and ``student_view`` repeat what the built objective reports (a test checks they agree):
they say, without building anything, whether a run needs a tracker and what the student
runs on.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ObjectiveCard"]


class ObjectiveCard(BaseModel):
    """What a registered objective name resolves to. Printed by ``mosic list objectives -v``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = Field(description="the target and the loss, in a line")
    uses_tracks: bool = Field(description="False: the trainer runs no tracker (static tracks are passed)")
    student_frames: tuple[int, ...] = Field(description="clip frames the student backbone runs on")
    student_view: bool = Field(False, description="the student also runs on a random crop/flip Phi of frame 0")
    paper: str
    notes: str = ""

    def summary(self) -> str:
        """A few lines for the command line."""
        frames = ", ".join(str(t) for t in self.student_frames) or "none"
        runs_on = f"frames ({frames})" + (" + Phi(frame 0)" if self.student_view else "")
        lines = [
            f"{self.name}: {self.description}",
            f"  tracks: {'yes (runs the tracker)' if self.uses_tracks else 'no (no tracker runs)'}; student runs on: {runs_on}",
            f"  paper: {self.paper}",
        ]
        if self.notes:
            lines.append(f"  note: {self.notes}")
        return "\n".join(lines)
