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


class Console:
    """Lines for people and one progress line under them, on one stream (stderr by default).

    On a terminal the progress line is redrawn in place at most twice a second, and a line said meanwhile
    is printed above it; elsewhere (a log file, a scheduler) the progress line is written as a plain line
    at most every `every` seconds, and always at the end, so that a log stays readable.
    """

    def __init__(self, stream: TextIO | None = None, every: float = 10.0):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = every
        self.last = time.time()
        self.drawn = ""  # the progress line on the terminal now

    def say(self, line: str) -> None:
        if self.drawn:
            self.stream.write("\r" + " " * len(self.drawn) + "\r")
        self.stream.write(line + "\n" + self.drawn)
        self.stream.flush()

    def show(self, text: str, final: bool = False) -> None:
        now = time.time()
        if not final and now - self.last < (0.5 if self.tty else self.every):
            return
        self.last = now
        if self.tty:
            self.stream.write("\r" + text.ljust(len(self.drawn)) + ("\n" if final else ""))
            self.drawn = "" if final else text
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


class Progress:
    """`done`/`total` with a rate and the time left, as the Console's progress line."""

    def __init__(self, total: int, unit: str, stream: TextIO | None = None, every: float = 10.0):
        self.total, self.unit = total, unit
        self.console = Console(stream, every)
        self.start = time.time()

    def line(self, done: int, extra: str = "") -> str:
        elapsed = time.time() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        left = f", {duration((self.total - done) / rate)} left" if rate > 0 and done < self.total else ""
        pct = f" ({done / self.total:.0%})" if self.total else ""
        return f"{done:,}/{self.total:,} {self.unit}{pct}, {rate:,.1f} {self.unit}/s{left}{', ' + extra if extra else ''}"

    def update(self, done: int, extra: str = "", final: bool = False) -> None:
        self.console.show(self.line(done, extra), final)
