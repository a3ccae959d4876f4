"""The reference in docs/reference/ cannot drift from `--help`: one page per command, every option named there.

The README stays a short guide that points at the reference; the options live in one page per command.
Read from the Typer app itself (no subprocess), so a new command or option fails here until it is documented.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main

from s2s.cli import app

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"
README = ROOT / "README.md"
README_MAX_BYTES = 10_000

COMMANDS = typer.main.get_command(app).commands


def option_names(command) -> list[str]:
    """Every `--long-name` of a command's options, both sides of a `--x/--no-x` flag included."""
    names = []
    for param in command.params:
        if param.param_type_name != "option":  # arguments are documented by the usage line, not by a name
            continue
        names += [o for o in [*param.opts, *param.secondary_opts] if o.startswith("--") and o != "--help"]
    return names


def named(page: str, option: str) -> bool:
    """`option` appears as itself: `--cpu` is not found inside `--cpus`, nor `--out` inside `--output`."""
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", page) is not None


def test_every_command_is_found():
    assert {"train", "evaluate", "export", "translate", "report", "plot", "attention"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_has_a_page_naming_every_option(name):
    page_path = REFERENCE / f"{name}.md"
    assert page_path.is_file(), f"no reference page for `s2s-job {name}`: write {page_path.relative_to(ROOT)}"
    page = page_path.read_text(encoding="utf-8")
    missing = [o for o in option_names(COMMANDS[name]) if not named(page, o)]
    assert not missing, f"{page_path.relative_to(ROOT)} does not document {', '.join(missing)} (see `s2s-job {name} --help`)"


def documented_options(page: str) -> list[str]:
    """The `--long-name`s in the first column of a page's option tables."""
    return re.findall(r"(?<![\w-])--[a-z][\w-]*", "\n".join(row.split("|")[1] for row in page.splitlines() if row.startswith("| `-")))


def usage_line(name: str) -> str:
    """`s2s-job NAME [OPTIONS] ARGS`, as `s2s-job NAME --help` prints it."""
    from typer.testing import CliRunner

    help_text = CliRunner().invoke(app, [name, "--help"], terminal_width=200).output
    return re.search(r"Usage: \S+ (\S+ .*?)\s*$", help_text, re.M).group(1).replace(f"{name} ", f"s2s-job {name} ", 1)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_page_names_only_options_that_exist_and_the_usage_line(name):
    """The other direction: a renamed or removed option (`--out` became `--output`) leaves no stale row behind."""
    page = (REFERENCE / f"{name}.md").read_text(encoding="utf-8")
    exists = set(option_names(COMMANDS[name]))
    stale = [o for o in documented_options(page) if o not in exists]
    assert not stale, f"docs/reference/{name}.md documents {', '.join(stale)}, which `s2s-job {name}` does not have"
    assert f"\n{usage_line(name)}\n" in page, f"docs/reference/{name}.md: the usage line should read `{usage_line(name)}`"


def test_the_index_links_every_page():
    index = (REFERENCE / "README.md").read_text(encoding="utf-8")
    missing = [n for n in COMMANDS if f"({n}.md)" not in index]
    assert not missing, f"docs/reference/README.md does not link {', '.join(missing)}"


def test_readme_is_a_short_guide_that_links_the_reference():
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size:,} bytes, over {README_MAX_BYTES:,}: move detail to docs/"
    assert "docs/reference/" in README.read_text(encoding="utf-8")


def test_the_check_finds_a_missing_option():
    """The matcher itself: a page that names `--cpus` and `--output` names neither `--cpu` nor `--out`."""
    page = "`--cpus 2` and `--output x`; `--no-vmap`"
    assert named(page, "--cpus") and named(page, "--output") and named(page, "--no-vmap")
    assert not named(page, "--cpu") and not named(page, "--out") and not named(page, "--vmap")
    assert documented_options("| `--output`, `-o` | x |\n| `--gpu` / `--cpu` | y |\ntext `--not-a-row`") == ["--output", "--gpu", "--cpu"]
