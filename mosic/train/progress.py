"""What a run reports while it trains: the rich progress bar and ``metrics.jsonl``."""

from __future__ import annotations

import json
import time
from pathlib import Path


class Progress:
    """rich progress bar with loss, throughput and ETA; silent when disabled."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.enabled = enabled
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
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


class Throughput:
    """Clips per second since the last :meth:`rate` call."""

    def __init__(self):
        self.start, self.clips = time.perf_counter(), 0

    def add(self, clips: int) -> None:
        self.clips += clips

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        rate = self.clips / max(elapsed, 1e-9)
        self.start, self.clips = time.perf_counter(), 0
        return rate


class MetricsLog:
    """Records kept in ``history`` and, on rank 0 with a run folder, appended to
    ``run_dir/metrics.jsonl`` (one JSON object per line)."""

    def __init__(self, history: list[dict], run_dir: Path | None, main_process: bool):
        self.history = history
        self.path = run_dir / "metrics.jsonl" if run_dir is not None and main_process else None

    def write(self, record: dict) -> dict:
        self.history.append(record)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        return record

    def truncate(self, step: int) -> None:
        """Keep the records of steps <= ``step`` (atomically): a killed run logged past its
        checkpoint, and the resumed steps are logged again."""
        if self.path is None or not self.path.is_file():
            return
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        if len(kept) == len(lines):
            return
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(self.path)
