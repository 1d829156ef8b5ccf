"""Progress of the Ray jobs (images done / total, images/s, bpp, failures): a live rich bar on a terminal,
and a plain line every ``LOG_EVERY_S`` seconds otherwise (a scheduled job's log, ``nohup``), where a rich bar
would print nothing until the end."""

from __future__ import annotations

import math
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

LOG_EVERY_S = 30.0


@dataclass
class Tally:
    """Running totals of one job. ``bpp`` is total bits over total pixels of the coded images: a mean of
    per-image bpp would let one tiny image (a 1x1 icon costs a whole header) dominate a folder."""

    images: int = 0
    failures: int = 0
    bits: int = 0
    pixels: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, images: int, failures: int, bits: int, pixels: int) -> None:
        self.images += images
        self.failures += failures
        self.bits += bits
        self.pixels += pixels

    @property
    def ok(self) -> int:
        return self.images - self.failures

    @property
    def bpp(self) -> float:
        return self.bits / self.pixels if self.pixels else float("nan")

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self.started

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s if self.wall_s > 0 else 0.0


class JobProgress:
    """Reports a job's tally from the driver; ``enabled=False`` keeps only the tally (tests, benchmarks)."""

    def __init__(self, label: str, console: Console | None = None, enabled: bool = True) -> None:
        self.tally = Tally()
        self.label = label
        self._console = console or Console(stderr=True, emoji=False)
        self._enabled = enabled
        self._progress: Progress | None = None
        self._task = None
        self._total = 0
        self._last_line = 0.0

    def start(self, total: int) -> None:
        self.tally = Tally()
        self._total = total
        self._last_line = time.perf_counter()
        if self._enabled and self._console.is_terminal:
            self._progress = Progress(
                TextColumn(f"[bold]{self.label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[ips]:.2f} img/s"),
                TextColumn("{task.fields[bpp]} bpp"),
                TextColumn("{task.fields[fail]} failed"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self._console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("job", total=total, ips=0.0, bpp=_bpp_text(float("nan")), fail=0)
        elif self._enabled:
            self._line("started")

    def add(self, images: int, failures: int, bits: int, pixels: int) -> None:
        self.tally.add(images, failures, bits, pixels)
        t = self.tally
        if self._progress is not None and self._task is not None:
            fields = {"ips": t.images_per_s, "bpp": _bpp_text(t.bpp), "fail": t.failures}
            self._progress.update(self._task, completed=t.images, **fields)
        elif self._enabled and time.perf_counter() - self._last_line >= LOG_EVERY_S:
            self._line("")

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        elif self._enabled:
            self._line("done")

    def _line(self, note: str) -> None:
        self._last_line = time.perf_counter()
        t = self.tally
        self._console.print(
            f"{self.label}: {t.images}/{self._total} images, {t.images_per_s:.2f} img/s, {_bpp_text(t.bpp)} bpp, "
            f"{t.failures} failed, {t.wall_s:.0f} s{' ' + note if note else ''}",
            highlight=False,
            soft_wrap=True,
        )


def _bpp_text(bpp: float) -> str:
    """``-`` until an image is coded (the mean of nothing is NaN, which read as an error), else 3 decimals."""
    return "-" if math.isnan(bpp) else f"{bpp:.3f}"
