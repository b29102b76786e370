"""One progress helper for long loops (detection over a folder, evaluation, downloads).

``track(items, label=...)`` wraps an iterable and reports ``label k/N, elapsed, rate, ETA``:
on a terminal one line rewritten in place, elsewhere (CI logs, files, notebooks' captured
output) a line every ``every`` seconds and a last line at the end, so logs stay short.
NumPy-free and backend-free: the samples import it before any model is built.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Iterable, Iterator, TypeVar

T = TypeVar("T")


def _format_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class Progress:
    """A counter that prints ``label k/N [elapsed, rate/s, ETA]``.

    Args:
        total: number of steps, or None when unknown (no ETA then).
        label: what is being counted, e.g. "detect" or "evaluate".
        unit: name of one step in the rate, e.g. "img".
        stream: where to write (default ``sys.stderr``, so stdout stays parseable).
        every: seconds between lines when ``stream`` is not a terminal.
        verbose: 0 prints nothing.
    """

    def __init__(self, total: int | None, label: str = "", unit: str = "it",
                 stream: IO[str] | None = None, every: float = 10.0, verbose: int = 1) -> None:
        self.total = total
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self.verbose = verbose
        self.count = 0
        self.start = time.perf_counter()
        self._last_print = -float("inf")
        isatty = getattr(self.stream, "isatty", None)
        self.dynamic = bool(isatty and isatty())

    def text(self) -> str:
        """The current progress line (without line ending)."""
        elapsed = time.perf_counter() - self.start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        of = f"/{self.total}" if self.total is not None else ""
        parts = [f"{self.label} {self.count}{of}".strip(), _format_seconds(elapsed),
                 f"{rate:.2f} {self.unit}/s"]
        if self.total is not None and rate > 0 and self.count < self.total:
            parts.append(f"ETA {_format_seconds((self.total - self.count) / rate)}")
        return f"{parts[0]} [{', '.join(parts[1:])}]"

    def update(self, steps: int = 1) -> None:
        """Count ``steps`` more and print if it is time to."""
        self.count += steps
        if not self.verbose:
            return
        now = time.perf_counter()
        done = self.total is not None and self.count >= self.total
        if self.dynamic:
            self.stream.write("\r" + self.text() + ("\n" if done else ""))
            self.stream.flush()
        elif done or now - self._last_print >= self.every:
            self.stream.write(self.text() + "\n")
            self.stream.flush()
            self._last_print = now

    def close(self) -> None:
        """Print the final line if the loop ended before ``total`` (or had none)."""
        if self.verbose and (self.total is None or self.count < self.total):
            self.stream.write(("\r" if self.dynamic else "") + self.text() + "\n")
            self.stream.flush()


def track(items: Iterable[T], total: int | None = None, label: str = "", unit: str = "it",
          stream: IO[str] | None = None, every: float = 10.0, verbose: int = 1) -> Iterator[T]:
    """Yield ``items`` while reporting progress (see ``Progress``).

    Args:
        items: what to iterate over.
        total: number of items (default ``len(items)`` when it has one).
        label, unit, stream, every, verbose: see ``Progress``.

    Yields:
        The items, unchanged.
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    progress = Progress(total, label=label, unit=unit, stream=stream, every=every,
                        verbose=verbose)
    try:
        for item in items:
            yield item
            progress.update()
    finally:
        progress.close()
