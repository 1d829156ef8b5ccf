"""Progress of an evaluation's parts (DiffC, another codec's grid, the anchors): a live rich bar on a terminal;
otherwise (a scheduled job's log, ``nohup``) a plain line when a part starts, at most every ``every_s``
seconds while it runs, and when it ends - a rich bar would print nothing there until the end, and a DiffC
part can run for many minutes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

LOG_EVERY_S = 30.0


class EvalProgress:
    """Reports on ``console``; ``enabled=False`` reports nothing (library callers, benchmarks)."""

    def __init__(self, console: Console, every_s: float = LOG_EVERY_S, enabled: bool = True) -> None:
        self.console = console
        self.every_s = every_s
        self.enabled = enabled

    @contextmanager
    def task(self, label: str, total: int, unit: str) -> Iterator[Callable[[int], None]]:
        """A part of ``total`` ``unit`` (e.g. "image x channel"); yields ``advance(n)``."""
        if not self.enabled:
            yield lambda n: None
            return
        if self.console.is_terminal:
            with Progress(
                TextColumn(f"[bold]{label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
            ) as bar:
                task = bar.add_task(label, total=total)
                yield lambda n: bar.advance(task, n)
            return
        started = last = time.perf_counter()
        done = 0

        def line(note: str) -> None:
            nonlocal last
            last = time.perf_counter()
            self.console.print(
                f"{label}: {done}/{total} ({unit}), {last - started:.0f} s{note}", highlight=False, soft_wrap=True
            )

        def advance(n: int) -> None:
            nonlocal done
            done += n
            if time.perf_counter() - last >= self.every_s:
                line("")

        line(" started")
        yield advance
        line(" done")
