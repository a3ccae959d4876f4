"""Plain text in, plain text out: one sentence per line, as OpenNMT, Marian and CTranslate2 users translate.

`s2s-job translate input.txt --output out.txt` (or `-` for stdin and stdout; a file may be local or on
S3, and `{date}`/`{partition}` in either path are filled as for Parquet) runs here, in this process,
without Ray: a fast path for files a single machine translates in minutes. Line N of the output is
the translation of line N of the input; an empty line stays empty, and a line that cannot be translated
(no visible characters, too long, bad bytes, a row the engine raises on) becomes an empty line and is
named on stderr.

It runs on the same machinery as the Parquet job (s2s/actor.py): a batch that raises is split until the
failing lines are found, an engine that fails even on a canary text is loaded afresh and the lines
retried, and the run's status and exit code follow the same rules (s2s/status.py): `complete` (0),
`failed_error_rate` (1), and a run that cannot finish (3). Its summary is the Parquet job's `_run.json`
(s2s/status.py), the file counted as one shard of its non-empty lines, plus `lines` and `empty`; `--json`
prints it in both modes. The input is read once, whole; the output file is written whole, under a
temporary name then renamed, once the lines are translated. A run that is not `complete` says so in a
marker beside it, `<output>.failed.json` (a complete run removes an old one): its status, counts and
why; where it could not finish, the output is not written at all and an older one is left as it was.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from s2s.actor import SafeTranslator, results_columns, translate_here
from s2s.config import DecodeConfig
from s2s.inputs import result_names
from s2s.progress import Progress, say
from s2s.status import part_counts, run_record, summarize
from s2s.storage import filesystem, write_durably

CHUNK = 2000  # lines translated per call: the progress line moves, and memory stays bounded


def _decoded(line: bytes) -> str | bytes:
    """The line as text; a line that is not UTF-8 stays bytes, so that the translator names the bad byte."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line


def _as_text(line: str | bytes) -> str:
    return line.decode("utf-8", "replace") if isinstance(line, bytes) else line


def is_text_path(path: str) -> bool:
    return path == "-" or path.lower().endswith(".txt")


def failed_marker(target: str) -> str:
    return f"{target}.failed.json"


def _exists(path: str) -> bool:
    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def _write(path: str, data: bytes) -> None:
    """A whole file, local or on object storage, or nothing (s2s.storage.write_durably)."""
    fs, inner = filesystem(path)
    if isinstance(fs, pafs.LocalFileSystem):
        Path(inner).parent.mkdir(parents=True, exist_ok=True)
    write_durably(fs, inner, lambda f: f.write(data))


def _read(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    fs, inner = filesystem(source)
    if fs.get_file_info(inner).type != pafs.FileType.File:
        raise FileNotFoundError(f"{source}: no such file. Pass a text file with one sentence per line, or - for stdin.")
    with fs.open_input_stream(inner) as f:
        return f.read()


def text_output(source: str, output: str | None, overwrite: bool = False) -> str:
    """Where text mode writes: `output`, else stdout for stdin and outputs/<the file's name> for a file. An
    existing file is replaced only with `overwrite`. A missing input is named first."""
    if source != "-" and not _exists(source):
        raise FileNotFoundError(f"{source}: no such file. Pass a text file with one sentence per line, or - for stdin.")
    target = output or ("-" if source == "-" else str(Path("outputs") / source.rstrip("/").rsplit("/", 1)[-1]))
    if target != "-" and not overwrite and _exists(target):
        raise ValueError(f"{target}: already exists. Pass --overwrite or choose another --output.")
    return target


def translate_text(source: str, target: str, model: str, decode: DecodeConfig, variant: str = "auto", device: str = "auto",
                   threads: int = 0, max_error_rate: float = 0.05) -> dict:
    """Translate `source` (a .txt file, local or s3://, or "-") line by line into `target` (the same, or "-");
    return the run's summary, the same as a Parquet run's `_run.json`."""
    from s2s.engine import load_model_dir, load_translator, usable_cpus

    def load():
        return load_translator(model, decode, variant, device, threads or usable_cpus())

    t0 = time.time()
    manifest = load_model_dir(model).manifest
    state: dict = {"translator": SafeTranslator(load())}  # a bad model directory or device fails here, before reading
    raw = _read(source)
    lines: list[str | bytes] = [_decoded(line) for line in raw.split(b"\n")]
    if lines and not lines[-1]:  # the newline that ends the last line is not an extra empty line
        lines.pop()
    say(f"{source}: {len(lines):,} lines, beam {decode.beam_size}")
    t_read = time.time()
    wanted = [i for i, line in enumerate(lines) if line.strip()]
    unit = {"path": source, "start": 0, "stop": len(wanted)}  # the file is one shard of its non-empty lines
    names = result_names("", False, None, flags=decode.check_rows, terms=bool(decode.glossary))
    columns: dict[str, list] = {}
    progress = Progress(len(wanted), "lines")

    def record(complete: bool, why: str | None = None) -> dict:
        stats = {}
        if columns:
            table = pa.table({"text": [_as_text(lines[i]) for i in wanted[:len(columns["error"])]],
                              **{names[k]: v for k, v in columns.items() if k in names}})
            engine = state["translator"].translator.engine if state.get("translator") else None
            stats = {"lines": {**part_counts(table, "text", names), "provider": engine.provider if engine else "",
                               "variant": engine.variant if engine else "", "node": "local", "gpus": ""}}
        summary = summarize(stats, set(stats), [unit], complete, time.time() - t0, max_error_rate)
        summary = run_record(source, target, model, manifest, decode, summary, names)
        phases = {"prepare_s": round(t_read - t0, 2), "translate_s": round(time.time() - t_read, 2)}  # model load and read; lines
        return {**summary, "phase_seconds": phases, "lines": len(lines), "empty": len(lines) - len(wanted),
                "engine_reloads": state.get("engine_failures", 0), **({"why": why} if why else {})}

    try:
        for start in range(0, len(wanted), CHUNK):
            chunk = wanted[start:start + CHUNK]
            results = translate_here(load, [lines[i] for i in chunk], state)
            for i, r in zip(chunk, results):
                if r.error:
                    say(f"line {i + 1}: {r.error}; written as an empty line")
            for k, v in results_columns(results, decode).items():
                columns.setdefault(k, []).extend(v)
            errors = sum(e is not None for e in columns["error"])
            progress.update(len(columns["error"]), f"{errors:,} error(s)", final=len(columns["error"]) == len(wanted))
    except Exception as e:
        if target != "-":
            _write(failed_marker(target), json.dumps(record(False, f"{type(e).__name__}: {e}"), indent=2).encode())
        raise
    summary = record(True)
    out = [""] * len(lines)
    for i, translation in zip(wanted, columns.get("translation", [])):
        out[i] = (translation or "").replace("\n", " ")
    text = "".join(line + "\n" for line in out)
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return summary
    _write(target, text.encode("utf-8"))
    fs, marker = filesystem(failed_marker(target))
    if summary["status"] == "complete":
        if fs.get_file_info(marker).type == pafs.FileType.File:
            fs.delete_file(marker)
    else:
        _write(failed_marker(target), json.dumps(summary, indent=2).encode())
    return summary
