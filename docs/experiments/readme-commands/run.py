"""Run every command in the README's ```bash blocks, as written, in a clone where the first command ran.

The first two blocks (set up and train; set up and test) are run on their own, by hand, because they
build the venv and take an hour; this runs every block after them, line by line, in the README's order,
with the clone's .venv activated, and logs each line's exit code, time and last stderr lines.

    python docs/experiments/readme-commands/run.py /path/to/clone > readme-commands.log
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path


def commands(readme: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    return [line for block in blocks[2:] for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def main() -> int:
    clone = Path(sys.argv[1]).resolve()
    failed = 0
    todo = commands((clone / "README.md").read_text())
    head = subprocess.run(["git", "-C", str(clone), "log", "--oneline", "-1"], capture_output=True, text=True).stdout.strip()
    print(f"clone {clone} at {head}; {len(todo)} command(s)", flush=True)
    for line in todo:
        t0 = time.time()
        p = subprocess.run(["bash", "-c", f". .venv/bin/activate && {line}"], cwd=clone, capture_output=True, text=True)
        failed += p.returncode != 0
        tail = [x for x in p.stderr.splitlines() if x.strip()][-3:]
        print(f"\n$ {line}\n  exit {p.returncode} in {time.time() - t0:.1f} s; stdout {len(p.stdout)} chars", flush=True)
        for x in tail:
            print(f"  stderr| {x[:200]}", flush=True)
    print(f"\n{len(todo) - failed} of {len(todo)} command(s) exited 0", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
