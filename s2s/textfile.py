"""Plain text in, plain text out: one sentence per line, as OpenNMT, Marian and CTranslate2 users translate.

`s2s-job translate input.txt --output out.txt` (or `-` for stdin and stdout) runs here, in this process,
without Ray: a local fast path for files a single machine translates in minutes. Line N of the output is
the translation of line N of the input; an empty line stays empty, and a line that cannot be translated
(no visible characters, too long, bad bytes, a row the engine raises on) becomes an empty line and is
named on stderr.

It runs on the same machinery as the Parquet job (s2s/actor.py): a batch that raises is split until the
failing lines are found, an engine that fails even on a canary text is loaded afresh and the lines
retried, and the run's status and exit code follow the same rules (s2s/status.py): `complete` (0),
`failed_error_rate` (1), and a run that cannot finish (3). The output file is written whole, under a
temporary name then renamed, once the lines are translated. A run that is not `complete` says so in a
marker beside it, `<output>.failed.json` (a complete run removes an old one): its status, counts and
why; where it could not finish, the output is not written at all and an older one is left as it was.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from s2s.actor import SafeTranslator, translate_here
from s2s.progress import Progress, say
from s2s.status import outcome
from s2s.storage import write_local
from s2s.config import DecodeConfig

CHUNK = 2000  # lines translated per call: the progress line moves, and memory stays bounded


def _decoded(line: bytes) -> str | bytes:
    """The line as text; a line that is not UTF-8 stays bytes, so that the translator names the bad byte."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line


def is_text_path(path: str) -> bool:
    return path == "-" or path.lower().endswith(".txt")


def failed_marker(target: str) -> Path:
    return Path(f"{target}.failed.json")


def text_output(source: str, output: str | None, overwrite: bool = False) -> str:
    """Where text mode writes: `output`, else stdout for stdin and outputs/<the file's name> for a file. An
    existing file is replaced only with `overwrite`."""
    target = output or ("-" if source == "-" else str(Path("outputs") / Path(source).name))
    if target != "-" and Path(target).exists() and not overwrite:
        raise ValueError(f"{target}: already exists. Pass --overwrite or choose another --output.")
    return target


def translate_text(source: str, target: str, model: str, decode: DecodeConfig, variant: str = "auto", device: str = "auto",
                   threads: int = 0, max_error_rate: float = 0.05) -> dict:
    """Translate `source` (a .txt file or "-") line by line into `target` (a file or "-"); return the summary."""
    from s2s.engine import load_translator, usable_cpus

    if source != "-" and not Path(source).is_file():
        raise FileNotFoundError(f"{source}: no such file. Pass a text file with one sentence per line, or - for stdin.")
    def load():
        return load_translator(model, decode, variant, device, threads or usable_cpus())

    state: dict = {"translator": SafeTranslator(load())}  # a bad model directory or device fails here, before reading
    raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    lines: list[str | bytes] = [_decoded(line) for line in raw.split(b"\n")]
    if lines and not lines[-1]:  # the newline that ends the last line is not an extra empty line
        lines.pop()
    say(f"{source}: {len(lines):,} lines, beam {decode.beam_size}")
    out: list[str] = []
    errors = 0
    progress = Progress(len(lines), "lines")
    t0 = time.time()
    wanted_lines = sum(1 for line in lines if line.strip())
    summary = {"input": source, "output": target, "lines": len(lines), "empty": len(lines) - wanted_lines}
    try:
        for start in range(0, len(lines), CHUNK):
            chunk = lines[start:start + CHUNK]
            wanted = [i for i, line in enumerate(chunk) if line.strip()]
            results = translate_here(load, [chunk[i] for i in wanted], state)
            translated = [""] * len(chunk)
            for i, r in zip(wanted, results):
                if r.error:
                    errors += 1
                    say(f"line {start + i + 1}: {r.error}; written as an empty line")
                translated[i] = (r.translation or "").replace("\n", " ")
            out += translated
            progress.update(len(out), f"{errors:,} error(s)", final=len(out) == len(lines))
    except Exception as e:
        summary.update({**outcome(False, wanted_lines, errors, max_error_rate), "why": f"{type(e).__name__}: {e}",
                        "seconds": round(time.time() - t0, 2)})
        if target != "-":
            write_local(failed_marker(target), json.dumps(summary, indent=2).encode())
        raise
    engine = state["translator"].translator.engine if state.get("translator") else None
    summary.update({"translated": wanted_lines - errors, "errors": errors, **outcome(True, wanted_lines, errors, max_error_rate),
                    "seconds": round(time.time() - t0, 2), "provider": engine.provider if engine else None,
                    "variant": engine.variant if engine else None, "engine_reloads": state.get("engine_failures", 0)})
    text = "".join(line + "\n" for line in out)
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return summary
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_local(path, text.encode("utf-8"))
    if summary["status"] == "complete":
        failed_marker(target).unlink(missing_ok=True)
    else:
        write_local(failed_marker(target), json.dumps(summary, indent=2).encode())
    return summary
