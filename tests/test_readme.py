"""Every command the README shows is checked, so a rename or a changed default cannot leave it wrong.

- Every `s2s-job` call in a README code block (and in the reference pages' examples) must parse: its
  command, options and values (a choice, a number) are what `s2s-job` accepts.
- The README's commands then run as written, in order, in a fresh folder and a fresh process each, from
  the first translation to the report. Two kinds of step do not run here: installs (the test command runs
  in the environment they make) and training (minutes to an hour; the tests train with the same code on a
  tiny corpus). Where the README trains into `runs/NAME`, the session's tiny trained run stands there, so
  that the steps after it (evaluate, export, translate, report) run on what a training run leaves. Steps on
  a cluster or on `s3://` are parse-only here; tests/test_ray_jobs.py and tests/test_s3.py run their paths.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import typer.main

from s2s.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CLI = typer.main.get_command(app)
try:
    from typer._click.exceptions import ClickException, UsageError  # newer Typer carries its own Click
except ImportError:  # pragma: no cover - older Typer runs on Click itself
    from click.exceptions import ClickException, UsageError


def code_lines(markdown: str) -> list[str]:
    """The shell lines of the ```bash blocks, continuations joined and comments dropped."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def steps(line: str) -> list[str]:
    """A line's `&&`-chained steps (a pipeline stays one step); quotes are respected."""
    out, start, quote = [], 0, None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif line.startswith(" && ", i):
            out.append(line[start:i].strip())
            start = i + 4
    return [*out, line[start:].strip()]


def s2s_args(step: str) -> list[str] | None:
    """The arguments of the step's `s2s-job` call (after any VAR=value, and after a pipe), or None."""
    lexer = shlex.shlex(step, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words: list[str] = []
    for token in [*lexer, "|"]:
        if token not in ("|", "||", ";", ">", "<", ">>"):
            words.append(token)
            continue
        while words and re.match(r"^[A-Z_]+=", words[0]):
            words = words[1:]
        if words and words[0] == "s2s-job":
            return words[1:]
        words = []
    return None


def parse(args: list[str]) -> None:
    """Parse `s2s-job ARGS` as the CLI would, without running it: Click raises on an unknown command or
    option, a missing argument, or a value of the wrong type or outside a choice."""
    ctx = typer.Context(CLI, info_name="s2s-job")
    command = CLI.get_command(ctx, args[0]) if args else None
    if command is None:
        raise UsageError(f"no such command: {args[:1]}")
    command.make_context(args[0], list(args[1:]), parent=ctx)


def runs_here(step: str) -> bool:
    """Whether the step runs in this test (see the module docstring)."""
    args = s2s_args(step)
    if args is None:  # a shell step: installs, the cluster's CLI and exports do not run; the README's own file making does
        return step.startswith("printf ")
    return args[0] not in ("train", "submit") and not any("s3://" in a for a in args)


def test_the_readme_has_the_two_fresh_machine_commands_first():
    lines = code_lines(README.read_text(encoding="utf-8"))
    assert "s2s-job train" in lines[0] and "s2s-job translate" in lines[0]  # the main job
    assert "python -m pytest" in lines[1] and (ROOT / ".ci" / "run").read_text().rstrip().endswith(lines[1])  # .ci/run runs it


def test_every_documented_call_parses():
    pages = [README, *sorted((ROOT / "docs" / "reference").glob("*.md")), ROOT / "docs" / "cluster.md"]
    calls = [(page.name, args) for page in pages for line in code_lines(page.read_text(encoding="utf-8"))
             for step in steps(line) if (args := s2s_args(step)) is not None and args != ["--version"]]
    assert len(calls) > 20
    bad = []
    for page, args in calls:
        try:
            parse(args)
        except ClickException as e:
            bad.append(f"{page}: s2s-job {shlex.join(args)}: {e.format_message()}")
    assert not bad, "\n".join(bad)


def test_the_parse_check_catches_a_wrong_call():
    for args in (["export", "runs/x", "--out", "m"], ["translate", "x.parquet", "--device", "tpu"], ["evaluate"], ["trian"]):
        with pytest.raises(ClickException):
            parse(args)


def test_the_readme_commands_run_as_written(tiny_run, tmp_path):
    """From the first command after training to the tour's report, each step a fresh process, exit 0."""
    lines = code_lines(README.read_text(encoding="utf-8"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    ran = []
    for line in lines:
        for step in steps(line):
            args = s2s_args(step)
            if args and args[0] == "train":  # a trained run where the README trains one
                run_dir = tmp_path / next((a for a in args[1:] if not a.startswith("-")), "runs/eng-fra")
                run_dir.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(tiny_run, run_dir)
            if not runs_here(step):
                continue
            done = subprocess.run(["bash", "-c", step], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"README step failed: {step}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            ran.append(step)
    assert any(s.startswith("s2s-job export") for s in ran) and any("| s2s-job translate -" in s for s in ran)
    assert sum(s.startswith("s2s-job translate") for s in ran) >= 2 and any(s.startswith("s2s-job report") for s in ran), ran
