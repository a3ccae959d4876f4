"""Re-run the five inputs of issue #14's table with the CLI as a user would, and count what comes back.

    python docs/experiments/exactly-once-table/run_table.py MODEL_DIR SENTENCES.parquet WORK_DIR

SENTENCES.parquet: real English sentences the model never saw (a run's data/test.parquet, column `src`).
Prints, for each input, the command's exit code and the output read back: rows, distinct ids, errors.
"""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

model, sentences, work = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
work.mkdir(parents=True, exist_ok=True)
english = pq.read_table(sentences).column("src").to_pylist()


def translate(name: str, source: Path, *extra: str) -> dict:
    out = work / f"out-{name}"
    cmd = [sys.executable, "-m", "s2s.cli", "translate", str(source), "--output", str(out), "--model", str(model), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True)
    table = pq.read_table(out) if out.exists() and any(out.glob("part-*")) else None
    ids = table.column("row_id").to_pylist() if table is not None else []
    errors = [e for e in table.column("error").to_pylist() if e] if table is not None else []
    run = json.loads((out / "_run.json").read_text()) if (out / "_run.json").exists() else {}
    last = (done.stderr.strip().splitlines() or [""])[-1]
    result = {"input": name, "args": " ".join(extra), "exit": done.returncode, "rows": len(ids), "distinct_ids": len(set(ids)),
              "errors": len(errors), "error_kinds": run.get("error_kinds"), "status": run.get("status"),
              "success_file": (out / "_SUCCESS").exists(), "last_stderr_line": last[:300]}
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return result


def binary_text(values: list) -> pa.Array:
    return pa.array([v.encode() if isinstance(v, str) else v for v in values], pa.binary()).view(pa.string())


# 1. 2,000 rows with a ~100 kB pass-through document each
rows = (english * 2)[:2000]
pq.write_table(pa.table({"text": rows, "doc": [f"{i}:" + "lorem ipsum " * 8500 for i in range(2000)]}), work / "wide.parquet")
translate("wide", work / "wide.parquet")

# 2. 300 rows, 10% null: over --max-error-rate, then the scheduler's retry with --resume
rows = [None if i % 10 == 0 else english[i] for i in range(300)]
pq.write_table(pa.table({"text": rows}), work / "nulls.parquet")
translate("nulls", work / "nulls.parquet")
translate("nulls", work / "nulls.parquet", "--resume")
translate("nulls", work / "nulls.parquet", "--resume", "--max-error-rate", "0.2")

# 3. rows whose text shows nothing: zero-width spaces, a BOM, control and format characters
invisible = ["\u200b\u200b\u200b", "\ufeff", "\x00\x01\x02", "\u202e\u2066\u200d", "\u2060", "\x1b[0m\x07"]
rows = [invisible[i % 6] if i % 50 == 0 else english[i] for i in range(300)]
pq.write_table(pa.table({"text": rows}), work / "invisible.parquet")
translate("invisible", work / "invisible.parquet")

# 4. 300 rows, one of them bytes that are not UTF-8
rows = english[:300]
rows[123] = b"Je suis all\xe9 au caf\xe9."  # Latin-1, not UTF-8
pq.write_table(pa.table({"text": binary_text(rows)}), work / "badbytes.parquet")
translate("badbytes", work / "badbytes.parquet")

# 5. Hive partitions whose files share a base name, no --id-column
for part, chunk in (("a", english[:50]), ("b", english[50:100])):
    (work / "hive" / f"part={part}").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": chunk}), work / "hive" / f"part={part}" / "data-0.parquet")
translate("hive", work / "hive")
