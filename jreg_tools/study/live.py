"""The study's console while its runs train: one live line per run, or plain periodic lines.

The parent process polls each run's ``progress.json`` (``study.progress``) and
shows the step, training CE, latest validation J and time left. On a terminal
that is a Rich progress bar per run (the library Lightning's own bar uses); when
stdout is not a terminal (tests, CI, a pipe) it is one plain line per run that
moved, at most every ``plain_every`` seconds. Every message goes through
``RunBoard.say``, so lines written from the worker threads never run into each
other.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from jreg_tools.study.progress import RunProgress, eta_seconds, read_progress


def _duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _value(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def describe(progress: RunProgress) -> str:
    """``loss 4.12, val J 0.45, ETA 3 min 10 s``: the fields after the step count."""
    return (
        f"loss {_value(progress.train_ce, '.3f')}, val J {_value(progress.val_j, '.2f')}, "
        f"ETA {_duration(eta_seconds(progress))}"
    )


class RunBoard:
    """Shows the progress of the runs in ``folders`` (run name -> run folder) while they train.

    Use as a context manager; call ``refresh`` from one thread (the poller) and
    ``say`` from any.

    Args:
        folders: the runs to show, in order.
        console: where to write; a terminal gets live bars, anything else plain lines.
        plain_every: seconds between two plain lines of the same run.
    """

    def __init__(
        self,
        folders: dict[str, Path],
        console: Console | None = None,
        plain_every: float = 60.0,
    ) -> None:
        self.folders = folders
        self.console = console or Console(file=sys.stdout, highlight=False)
        self.plain_every = plain_every
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._tasks: dict[str, int] = {}
        self._shown: dict[str, tuple[float, int]] = {}

    @property
    def live(self) -> bool:
        """Rich bars (a terminal) rather than plain lines."""
        return self.console.is_terminal

    def __enter__(self) -> RunBoard:
        if self.live:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                console=self.console,
                refresh_per_second=2,
            )
            for name in self.folders:
                self._tasks[name] = self._progress.add_task(name, total=None, info="waiting")
            self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.refresh()
        if self._progress is not None:
            self._progress.stop()

    def say(self, message: str) -> None:
        """Print one whole line (above the live bars on a terminal)."""
        with self._lock:
            if self._progress is not None:
                self._progress.console.print(message, markup=False, highlight=False)
            else:
                self.console.file.write(message + "\n")
                self.console.file.flush()

    def refresh(self) -> None:
        """Read every run's ``progress.json`` and update its bar, or print its plain line."""
        now = time.monotonic()
        for name, folder in self.folders.items():
            progress = read_progress(folder)
            if progress is None:
                continue
            if self._progress is not None:
                self._progress.update(
                    self._tasks[name],
                    total=progress.max_steps,
                    completed=progress.step,
                    info=describe(progress),
                )
                continue
            last_time, last_step = self._shown.get(name, (-math.inf, -1))
            if progress.step != last_step and now - last_time >= self.plain_every:
                self._shown[name] = (now, progress.step)
                self.say(
                    f"study: {name}: step {progress.step}/{progress.max_steps}, "
                    f"{describe(progress)}"
                )
