"""One progress line for people, on stderr: redrawn in place on a terminal, a plain line every N seconds in a log."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def say(message: str) -> None:
    """A line for people: stderr, so that stdout stays for what machines read (`--json`)."""
    print(message, file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """`done`/`total` with a rate and the time left, as one line.

    On a terminal the line is redrawn at most twice a second; elsewhere (a log file, a scheduler) a new line
    is written every `every` seconds, and always at the end, so that a log stays readable.
    """

    def __init__(self, total: int, unit: str, stream: TextIO | None = None, every: float = 10.0):
        self.total, self.unit, self.every = total, unit, every
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = self.last = time.time()
        self.width = 0

    def line(self, done: int, extra: str = "") -> str:
        elapsed = time.time() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        left = f", {duration((self.total - done) / rate)} left" if rate > 0 and done < self.total else ""
        pct = f" ({done / self.total:.0%})" if self.total else ""
        return f"{done:,}/{self.total:,} {self.unit}{pct}, {rate:,.1f} {self.unit}/s{left}{', ' + extra if extra else ''}"

    def update(self, done: int, extra: str = "", final: bool = False) -> None:
        now = time.time()
        if not final and now - self.last < (0.5 if self.tty else self.every):
            return
        self.last = now
        text = self.line(done, extra)
        if self.tty:
            self.stream.write("\r" + text.ljust(self.width) + ("\n" if final else ""))
            self.width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
