"""Every benchmark script kept in the repo runs here on tiny inputs, so that none can rot unnoticed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_protocol_costs_runs_locally_and_on_s3(tmp_path):
    out = tmp_path / "costs.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "protocol_costs.py"), "--rows", "2000", "--rows-per-unit", "1000",
                    "--repeat", "1", "--json", str(out)], check=True, timeout=300)
    rows = json.loads(out.read_text())
    for where in ("local", "s3"):
        mine = [r for r in rows if r["where"] == where]
        assert [r["what"].split(" ")[0] for r in mine] == ["read", "publish", "one", "one"]
        assert all(r["ours_ms"] > 0 for r in mine) and [r["plain_ms"] is not None for r in mine] == [True, True, False, False]
