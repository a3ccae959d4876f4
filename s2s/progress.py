"""One progress line for people, on stderr: redrawn in place on a terminal, a plain line every N seconds in a log."""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator, TextIO


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
        self.lock = threading.Lock()  # relayed lines are printed from another thread than the progress line

    def say(self, line: str) -> None:
        with self.lock:
            if self.drawn:
                self.stream.write("\r" + " " * len(self.drawn) + "\r")
            self.stream.write(line + "\n" + self.drawn)
            self.stream.flush()

    def show(self, text: str, final: bool = False) -> None:
        with self.lock:
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


class Relay:
    """Workers' lines for people, held for the driver to print (a Ray actor; training and translate workers).

    Ray forwards what a worker prints with its pid (and colour codes) in front, line by line; through the
    relay each line reaches the driver's console once, as is, and the progress line can be redrawn on a terminal.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.progress = ""

    def say(self, line: str) -> None:
        self.lines.append(line)

    def show(self, line: str) -> None:
        self.progress = line

    def take(self) -> tuple[list[str], str]:
        lines, self.lines = self.lines, []
        return lines, self.progress


def print_relayed(relay, done: threading.Event, console: Console) -> None:
    """Until `done`: every half second, print the relay's new lines and its progress line where it changed."""
    import ray

    shown = ""
    while True:
        finished = done.wait(0.5)
        try:
            lines, progress = ray.get(relay.take.remote(), timeout=30)
        except Exception as e:  # the relay is for people: the work goes on without it
            console.say(f"(worker lines are no longer relayed: {e})")
            return
        for line in lines:
            console.say(line)
        if progress != shown:
            drawn = console.last
            console.show(progress, final=finished)
            shown = progress if console.last != drawn else shown
        if finished:
            if console.drawn:
                console.show(console.drawn, final=True)
            return


@contextmanager
def relayed(console: Console) -> Iterator:
    """A Relay actor on the driver's node (which an autoscaler never takes away), printed on `console` by a
    thread of the driver while the block runs; yields the actor's handle for the workers."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    relay = ray.remote(num_cpus=0, scheduling_strategy=here)(Relay).remote()
    done = threading.Event()
    printer = threading.Thread(target=print_relayed, args=(relay, done, console), daemon=True)
    printer.start()
    try:
        yield relay
    finally:
        done.set()
        printer.join(timeout=60)
        ray.kill(relay)
