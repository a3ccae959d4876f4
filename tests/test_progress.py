"""The progress line: redrawn in place on a terminal, a plain line now and then in a log, always the last one."""

import io

from s2s.progress import Console, Progress, duration


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_whole_lines_and_always_the_last_one():
    log = io.StringIO()
    p = Progress(1000, "rows", stream=log, every=3600)
    p.update(10, "0 error(s)")
    p.update(500, "0 error(s)")  # within `every` of the start: not written
    p.update(1000, "2 error(s)", final=True)
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("1,000/1,000 rows (100%), ") and lines[0].endswith(", 2 error(s)")
    assert "left" not in lines[0] and "\r" not in log.getvalue()


def test_a_terminal_gets_one_line_redrawn():
    tty = Terminal()
    p = Progress(200, "rows", stream=tty)
    p.console.last -= 1  # as if the last draw were a second ago
    p.update(50)
    p.update(200, final=True)
    out = tty.getvalue()
    assert out.startswith("\r50/200 rows (25%)") and "left" in out.split("\r")[1]
    assert out.count("\r") == 2 and out.endswith("\n") and out.count("\n") == 1


def test_a_line_said_on_a_terminal_goes_above_the_progress_line():
    tty = Terminal()
    console = Console(tty)
    console.last -= 1
    console.show("epoch 1 step 50/100")
    console.say("validation after epoch 1: BLEU 12.34")
    console.show("epoch 2 step 100/100", final=True)
    screen = []  # what a terminal shows: \r returns to the line's start, later characters overwrite
    for line in tty.getvalue().split("\n"):
        shown = ""
        for part in line.split("\r"):
            shown = part + shown[len(part):]
        screen.append(shown.rstrip())
    assert screen == ["validation after epoch 1: BLEU 12.34", "epoch 2 step 100/100", ""]


def test_durations_read_at_a_glance():
    assert [duration(s) for s in (5, 75, 3725)] == ["5s", "1m15s", "1h02m"]
