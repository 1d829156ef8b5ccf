"""A live rich progress bar for the Ray jobs (images done / total, images/s, mean bpp, failures)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@dataclass
class Tally:
    """Running totals of one job; ``mean_bpp`` is over successfully coded images."""

    images: int = 0
    failures: int = 0
    bpp_sum: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def add(self, images: int, failures: int, bpp_sum: float) -> None:
        self.images += images
        self.failures += failures
        self.bpp_sum += bpp_sum

    @property
    def ok(self) -> int:
        return self.images - self.failures

    @property
    def mean_bpp(self) -> float:
        return self.bpp_sum / self.ok if self.ok else float("nan")

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self.started

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s if self.wall_s > 0 else 0.0


class JobProgress:
    """Drives a rich bar from the driver; ``enabled=False`` keeps only the tally (tests, benchmarks)."""

    def __init__(self, label: str, console: Console | None = None, enabled: bool = True) -> None:
        self.tally = Tally()
        self._progress = (
            Progress(
                TextColumn(f"[bold]{label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[ips]:.2f} img/s"),
                TextColumn("{task.fields[bpp]:.3f} bpp"),
                TextColumn("{task.fields[fail]} failed"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            if enabled
            else None
        )
        self._task = None

    def start(self, total: int) -> None:
        self.tally = Tally()
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task("job", total=total, ips=0.0, bpp=float("nan"), fail=0)

    def add(self, images: int, failures: int, bpp_sum: float) -> None:
        self.tally.add(images, failures, bpp_sum)
        if self._progress is not None and self._task is not None:
            t = self.tally
            self._progress.update(self._task, completed=t.images, ips=t.images_per_s, bpp=t.mean_bpp, fail=t.failures)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
