"""Plain text in, plain text out: one sentence per line, as OpenNMT, Marian and CTranslate2 users translate.

`s2s-job translate input.txt --output out.txt` (or `-` for stdin and stdout) runs here, in this process,
without Ray: a local fast path for files a single machine translates in minutes. Line N of the output is
the translation of line N of the input; an empty line stays empty, and a line that cannot be translated
(no visible characters, too long, bad bytes) becomes an empty line and is named on stderr. The output file
is written under a temporary name and renamed when whole, so it never holds half a translation. Parquet
input goes through the Ray job (s2s/translate.py), which adds resume and exactly-once shards.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from s2s.progress import Progress, say
from s2s.translator import DecodeConfig

CHUNK = 2000  # lines translated per call: the progress line moves, and memory stays bounded


def _decoded(line: bytes) -> str | bytes:
    """The line as text; a line that is not UTF-8 stays bytes, so that the translator names the bad byte."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line


def is_text_path(path: str) -> bool:
    return path == "-" or path.lower().endswith(".txt")


def translate_text(source: str, target: str, model: str, decode: DecodeConfig, variant: str = "auto", device: str = "auto",
                   threads: int = 0) -> dict:
    """Translate `source` (a .txt file or "-") line by line into `target` (a file or "-"); return the counts."""
    from s2s.export.runtime import load_translator, usable_cpus

    if source != "-" and not Path(source).is_file():
        raise FileNotFoundError(f"{source}: no such file. Pass a text file with one sentence per line, or - for stdin.")
    translator = load_translator(model, decode, variant, device, threads or usable_cpus())
    if source == "-":
        raw = sys.stdin.buffer.read()
    else:
        raw = Path(source).read_bytes()
    lines: list[str | bytes] = [_decoded(line) for line in raw.split(b"\n")]
    if lines and not lines[-1]:  # the newline that ends the last line is not an extra empty line
        lines.pop()
    say(f"{source}: {len(lines):,} lines, beam {decode.beam_size}")
    out: list[str] = []
    errors = 0
    progress = Progress(len(lines), "lines")
    t0 = time.time()
    for start in range(0, len(lines), CHUNK):
        chunk = lines[start:start + CHUNK]
        wanted = [i for i, line in enumerate(chunk) if line.strip()]
        results = translator.translate([chunk[i] for i in wanted])
        translated = [""] * len(chunk)
        for i, r in zip(wanted, results):
            if r.error:
                errors += 1
                say(f"line {start + i + 1}: {r.error}; written as an empty line")
            translated[i] = (r.translation or "").replace("\n", " ")
        out += translated
        progress.update(len(out), f"{errors:,} error(s)", final=len(out) == len(lines))
    text = "".join(line + "\n" for line in out)
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    translated_lines = sum(1 for line in lines if line.strip())
    return {"input": source, "output": target, "lines": len(lines), "translated": translated_lines - errors,
            "empty": len(lines) - translated_lines, "errors": errors,
            "error_rate": round(errors / translated_lines, 6) if translated_lines else 0.0,
            "seconds": round(time.time() - t0, 2), "provider": translator.engine.provider}
