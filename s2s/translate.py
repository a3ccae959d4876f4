"""`s2s-job translate`: Parquet in, Parquet out, on Ray Data with onnxruntime actors. Every row exactly once.

The driver lists the input files and cuts them into units (row ranges of one file), then wires

    from_items(units) -> map_batches(read_texts)        tasks: pyarrow reads each unit's text column
                      -> map_batches(TranslateBatch)    actor pool: loads the model once, translates
                      -> map_batches(commit_shard)      tasks: re-read the unit's rows, add the results and
                                                        write part-<unit>.parquet (s2s/output.py)

Each stage passes one row per unit (its texts or its results as lists), so Ray Data's block splitting,
which cuts a large map output into several blocks, can never cut a unit in two. The pass-through columns,
however wide, never travel through Ray Data: the commit task reads them from the input again. The commit
checks the unit's row count before it writes, and the part's footer records the unit and the run's
fingerprint, which `--resume` verifies.

Why not `read_parquet`/`write_parquet` (or Ray Data's checkpointing, see docs/exactly-once.md): the
default id needs each row's position in its file, which `read_parquet` does not give, and exactly-once
needs one output file per input unit committed with a rename and verified on resume.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from s2s.cluster import init_ray, is_head, node_shapes, work_resources
from s2s.export.runtime import choose_providers, library_versions
from s2s.output import (ATTEMPTS_DIR, JOB_FILE, LEASE_FILE, RUN_FILE, STATS_KEY, SUCCESS_FILE, TMP_PREFIX, Lease, LeaseHeld,
                        absolute, delete_if_present, filesystem, is_uri, read_json, write_durably, write_json)
from s2s.progress import Progress, relayed, say
from s2s.quality import QualityCounts, as_references
from s2s.translator import DecodeConfig, Translation

log = logging.getLogger(__name__)

RESULT_TYPES = {"translation": pa.string(), "score": pa.float64(), "src_tokens": pa.int32(), "tgt_tokens": pa.int32(),
                "error": pa.string(), "nbest": pa.list_(pa.struct([("translation", pa.string()), ("score", pa.float64())]))}
RESULT_COLUMNS = ("translation", "score", "src_tokens", "tgt_tokens", "error")  # nbest too, with --nbest > 1

__all__ = ["JobError", "LeaseHeld", "TranslateConfig", "run_translate", "filesystem"]


class JobError(ValueError):
    """A run that cannot start: the message names the input, column or directory and what to do."""


@dataclass(frozen=True)
class TranslateConfig:
    input: str  # a Parquet file, a folder of shards, or a glob; local or any pyarrow URI (s3://, gs://)
    output: str  # folder for the output shards, _run.json and _SUCCESS
    model: str = "models/eng-fra"  # exported model directory
    text_column: str = "text"
    id_column: str | None = None  # None: add `row_id` = "<file path within the input>#<row>"
    reference_column: str | None = None  # references (a string or a list of strings): adds BLEU/chrF to _run.json
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    actors: int = 0  # 0: as many as fit while leaving room for the read and write tasks (see `size_actor_pool`)
    cpus_per_actor: float = 0.0  # 0: one core's worth, less the half CPU each node keeps for I/O tasks
    gpus_per_actor: float = 0.0
    device: str = "auto"  # auto, cpu or cuda (cuda fails at once where it cannot load)
    variant: str = "auto"  # fp32, int8, or the model's CPU default
    rows_per_shard: int = 2000  # one unit of work, output file and resume step
    max_error_rate: float = 0.05  # exit nonzero past this share of rows with an error
    overwrite: bool = False
    resume: bool = False
    verbose: bool = False  # also Ray Data's own progress reports and logs (off: one progress line)

    def __post_init__(self) -> None:
        if self.overwrite and self.resume:
            raise ValueError("--overwrite and --resume contradict each other; pass one")
        if self.rows_per_shard < 1 or self.actors < 0 or self.cpus_per_actor < 0 or self.gpus_per_actor < 0:
            raise ValueError("rows_per_shard >= 1 and actors, cpus_per_actor and gpus_per_actor >= 0 are required")
        if not 0 <= self.max_error_rate <= 1:
            raise ValueError(f"max_error_rate must be between 0 and 1, got {self.max_error_rate}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")


# ---------------------------------------------------------------- inputs and units (driver)


def fill_template(path: str, values: dict[str, str | None]) -> str:
    """Fill `{date}`/`{partition}` in a path from the values a scheduler passes; refuse a hole left open."""
    for key, value in values.items():
        placeholder = "{" + key + "}"
        if placeholder in path:
            if not value:
                raise JobError(f"{path}: has {placeholder} but no --{key} was given")
            path = path.replace(placeholder, value)
    return path


def list_inputs(spec: str) -> tuple[pafs.FileSystem, list[dict]]:
    """The Parquet files named by a file, a folder (searched recursively) or a glob, sorted.

    Each comes with its size and modification time (the run's fingerprint covers them) and its label: its
    path within the folder or glob base it was found under, which makes the default row ids unique.
    """
    fs, path = filesystem(spec)
    if any(ch in path for ch in "*?["):
        root = path[: min(path.index(ch) for ch in "*?[" if ch in path)].rsplit("/", 1)[0] or "/"
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        found = [i for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, path)]
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise JobError(f"{spec}: no such input. Pass a Parquet file, a folder of shards or a glob.")
        if info.type == pafs.FileType.File:
            root, found = path.rsplit("/", 1)[0], [info]
        else:
            root = path.rstrip("/")
            infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
            found = [i for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")
                     and not any(part.startswith(("_", ".")) for part in i.path[len(root) + 1:].split("/"))]
    if not found:
        raise JobError(f"{spec}: no Parquet files found there.")
    # a URI keeps its scheme and query (?endpoint_override=...): the read and commit tasks open it with `filesystem`
    scheme, query = (spec.split("://", 1)[0] + "://", spec.partition("?")[2]) if is_uri(spec) else ("", "")
    return fs, [{"path": scheme + i.path + (f"?{query}" if query else ""), "label": i.path[len(root) + 1:], "size": i.size,
                 "mtime_ns": i.mtime_ns} for i in sorted(found, key=lambda i: i.path)]


def plan_units(fs: pafs.FileSystem, files: list[dict], cfg: TranslateConfig) -> list[dict]:
    """Check every file's footer (readable, has the columns) and cut it into row ranges."""
    units = []
    for f in files:
        try:
            with fs.open_input_file(filesystem(f["path"])[1]) as handle:
                meta = pq.ParquetFile(handle)
                names, n_rows = meta.schema_arrow.names, meta.metadata.num_rows
        except (pa.ArrowInvalid, OSError) as e:
            raise JobError(f"{f['path']}: not a readable Parquet file ({e}). Fix or remove it, then run again.") from e
        for col, flag in ((cfg.text_column, "--text-column"), (cfg.id_column, "--id-column"), (cfg.reference_column, "--reference-column")):
            if col and col not in names:
                raise JobError(f"{f['path']}: no column {col!r}; it has {names}. Name the right one with {flag}.")
        if not cfg.id_column and "row_id" in names:
            raise JobError(f"{f['path']}: already has a column 'row_id'; pass --id-column row_id to use it as the id.")
        key = hashlib.sha1(f["path"].encode()).hexdigest()[:12]
        for start in range(0, n_rows, cfg.rows_per_shard):
            units.append({"path": f["path"], "label": f["label"], "start": start, "stop": min(n_rows, start + cfg.rows_per_shard),
                          "name": f"part-{key}-{start:010d}.parquet"})
    return units


# ---------------------------------------------------------------- the three stages (Ray tasks and actors)


_LAST_ROW_GROUP: dict[tuple, pa.Table] = {}  # the row group this worker process decoded last


def read_rows(unit: dict, columns: list[str] | None = None) -> pa.Table:
    """The unit's rows (or some of their columns), read from its file.

    A row group is decoded once per process and reused: Parquet cannot read rows k..k+n without decoding
    the group from its start, and writers make groups of up to a million rows, so without this a file with
    one big group would be decoded once per unit (quadratic; measured: a read task ate half a core on a
    100k-row file).
    """
    fs, path = filesystem(unit["path"])
    try:
        info = fs.get_file_info(path)
        with fs.open_input_file(path) as handle:
            pf = pq.ParquetFile(handle)
            parts, offset = [], 0
            for rg in range(pf.num_row_groups):
                n = pf.metadata.row_group(rg).num_rows
                if offset + n > unit["start"] and offset < unit["stop"]:
                    key = (path, info.size, info.mtime_ns, tuple(columns or ()), rg)
                    if key not in _LAST_ROW_GROUP:
                        _LAST_ROW_GROUP.clear()
                        _LAST_ROW_GROUP[key] = pf.read_row_group(rg, columns=columns)
                    t = _LAST_ROW_GROUP[key]
                    parts.append(t.slice(max(0, unit["start"] - offset), unit["stop"] - max(offset, unit["start"])))
                offset += n
    except (pa.ArrowException, OSError) as e:
        raise OSError(f"{unit['path']}: rows {unit['start']}..{unit['stop']} cannot be read ({type(e).__name__}: {e}). Fix or "
                      "replace the file and start over with --overwrite (a changed input is refused by --resume), "
                      "or take it out of the input.") from e
    return pa.concat_tables(parts) if parts else pf.schema_arrow.empty_table()


def read_texts(batch: pa.Table, text_column: str) -> pa.Table:
    """Add each unit's texts as one list cell: one row per unit, so no block boundary can split a unit.

    String columns are passed as bytes: a row whose bytes are not UTF-8 then fails alone, in the translator,
    instead of failing the whole read (pyarrow raises on converting such a string).
    """
    cells = []
    for unit in batch.select(["path", "start", "stop"]).to_pylist():
        col = read_rows(unit, [text_column]).column(0).combine_chunks()
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            col = col.view(pa.large_binary() if pa.types.is_large_string(col.type) else pa.binary())
        cells.append(col)
    return batch.append_column("texts", pa.array([c.to_pylist() for c in cells]))


CANARY = "a"  # a text any model translates: when it fails too, the engine is broken, not the row
ISOLATE_AFTER = 2  # deaths of a unit's actor before its rows are translated one at a time
MAX_ENGINE_FAILURES = 3  # fresh actors whose engine failed on one unit before the run stops
MAX_POISON_ROWS = 10  # rows of one unit that crashed their actor before the run stops


class UnitAttempts:
    """How often a unit was started on an actor without finishing, kept in the output folder.

    Ray Data restarts a dead actor and retries its unit without limit. A row that kills the process every
    time (a crash in native code) would loop forever, so after ISOLATE_AFTER deaths the unit's rows are
    translated one at a time, each recorded as in flight first: the row in flight when the actor died again
    is flagged on the next start instead of translated. Only deaths count: a row that raises is flagged at
    once by bisecting its batch.
    """

    def __init__(self, output: str, name: str):
        self.fs, out = filesystem(output)
        self.path = f"{out}/{ATTEMPTS_DIR}/{name}.json"
        self.record: dict = {}

    def start(self) -> dict:
        rec = read_json(self.fs, self.path) or {"starts": 0, "engine_failures": 0, "poison": [], "in_flight": None}
        if rec["in_flight"] is not None:
            rec["poison"].append(rec["in_flight"])
            rec["in_flight"] = None
        rec["deaths"] = rec["starts"] - rec["engine_failures"]  # every earlier start ended without finishing
        rec["starts"] += 1
        self.record = rec
        self.save()
        return rec

    def save(self) -> None:
        write_json(self.fs, self.path, self.record)

    def finish(self) -> None:
        delete_if_present(self.fs, self.path)


class TranslateBatch:
    """Ray Data actor: loads the model directory once, then translates whole units."""

    def __init__(self, model: str, output: str, decode: DecodeConfig, variant: str, device: str, threads: int, relay=None):
        from s2s.export.runtime import load_translator

        import ray

        self.relay = relay
        self.translator = load_translator(model, decode, variant, device, threads)
        self.output, self.nbest, self.node = output, decode.nbest, ray.get_runtime_context().get_node_id()
        self.say(f"translate actor pid {os.getpid()}: onnxruntime provider {self.translator.engine.provider}, "
                 f"variant {self.translator.engine.variant}{' with the vocabulary map' if self.translator.engine.use_vmap else ''}, "
                 f"{threads} thread(s)")

    def say(self, line: str) -> None:
        """A line for people, through the driver's relay (s2s.progress.Relay), which prints it as is; Ray would
        print it with the actor's name and pid in front. Waited for: the actor may exit right after."""
        import ray

        if self.relay is None:  # an actor made outside run_translate
            say(line)
            return
        try:
            ray.get(self.relay.say.remote(line), timeout=10)
        except Exception:  # noqa: BLE001 - the relay is gone: the line still reaches Ray's log forwarding
            say(line)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for unit in batch.to_pylist():
            results = self._translate_unit(unit["name"], unit.pop("texts"))
            rows.append({**unit, "translation": [r.translation for r in results], "score": [r.score for r in results],
                         "src_tokens": [r.src_tokens for r in results], "tgt_tokens": [r.tgt_tokens for r in results],
                         "error": [r.error for r in results], "provider": self.translator.engine.provider, "node": self.node,
                         **({"nbest": [[{"translation": t, "score": s} for t, s in r.nbest] for r in results]} if self.nbest > 1 else {})})
        return pa.Table.from_pylist(rows)

    def _translate_unit(self, name: str, texts: list) -> list[Translation]:
        self.attempts = UnitAttempts(self.output, name)
        rec = self.attempts.start()
        if rec["deaths"] < ISOLATE_AFTER:
            results = self._safe_translate(texts)
        else:
            results = self._isolate(texts, rec)
        self.attempts.finish()
        return results

    def _isolate(self, texts: list, rec: dict) -> list[Translation]:
        """One row at a time, each marked in flight first, skipping the rows that killed earlier attempts."""
        if len(rec["poison"]) > MAX_POISON_ROWS or rec["deaths"] > ISOLATE_AFTER + len(rec["poison"]) + 2:
            raise RuntimeError(f"unit {self.attempts.path}: its actor died {rec['deaths']} times ({len(rec['poison'])} rows "
                               "flagged as crashing it); the machine or the model, not the rows, looks broken. Rerun with --resume.")
        self.say(f"translate actor pid {os.getpid()}: unit {self.attempts.path} killed its actor {rec['deaths']} times; "
                 f"translating it row by row ({len(rec['poison'])} row(s) flagged so far)")
        results = []
        for i, text in enumerate(texts):
            if i in rec["poison"]:
                results.append(Translation(None, None, 0, 0, error=f"row crashed the translate actor's process; flagged after "
                                                                   f"{rec['deaths']} attempts instead of translated"))
                continue
            rec["in_flight"] = i
            self.attempts.save()
            results += self._safe_translate([text])
        return results

    def _safe_translate(self, texts: list) -> list[Translation]:
        """Translate; where a batch raises, split it until the failing rows are found and flagged.

        A failure that is not the rows' (the session or the device) shows as the canary failing too: then
        the actor exits, so that Ray Data starts a fresh one and retries the unit, instead of committing
        every row of the unit as an error.
        """
        try:
            return self.translator.translate(texts)
        except Exception as e:  # noqa: BLE001 - one bad row must not cost the others
            try:
                self.translator.translate([CANARY])
            except Exception:  # noqa: BLE001
                self._engine_failed(e)
            if len(texts) == 1:
                return [Translation(None, None, 0, 0, error=f"{type(e).__name__}: {e}")]
            mid = len(texts) // 2
            return self._safe_translate(texts[:mid]) + self._safe_translate(texts[mid:])

    def _engine_failed(self, error: Exception) -> None:
        rec = self.attempts.record
        rec["engine_failures"] += 1
        rec["in_flight"] = None
        self.attempts.save()
        if rec["engine_failures"] >= MAX_ENGINE_FAILURES:
            raise RuntimeError(f"the translation engine failed in {rec['engine_failures']} fresh actors on unit "
                               f"{self.attempts.path}: {type(error).__name__}: {error}") from error
        self.say(f"translate actor pid {os.getpid()}: the engine itself fails ({type(error).__name__}: {error}); "
                 "exiting so that Ray starts a fresh actor and retries the unit")
        os._exit(75)  # a crash, not a clean exit: Ray Data restarts the actor and retries its task


def commit_shard(batch: pa.Table, output: str, id_column: str | None, text_column: str, fingerprint: str) -> pa.Table:
    """Join each unit's results to its input rows and write them to part-<unit>.parquet, whole or not at all.

    The rows are read from the input again (the pass-through columns never went through Ray Data); the
    commit refuses to write a unit whose row count is not the one planned. The part's footer holds its
    unit, the run's fingerprint and its counts (`shard_stats`), so `--resume` verifies the part and
    _run.json sums footers instead of reading every row back.
    """
    fs, out = filesystem(output)
    done = []
    for unit in batch.to_pylist():
        planned = unit["stop"] - unit["start"]
        rows, repaired = _valid_utf8(read_rows(unit))
        if not id_column:
            rows = rows.append_column("row_id", pa.array([f"{unit['label']}#{i}" for i in range(unit["start"], unit["stop"])]))
        names = RESULT_COLUMNS + (("nbest",) if "nbest" in batch.column_names else ())
        if {rows.num_rows, *(len(unit[c]) for c in names)} != {planned}:
            raise RuntimeError(f"{unit['name']}: {rows.num_rows} input rows and {len(unit['error'])} results for the "
                               f"{planned} rows planned from {unit['path']} rows {unit['start']}..{unit['stop']}; not committed")
        for name in names:
            rows = rows.append_column(name, pa.array(unit[name], RESULT_TYPES[name]))
        counts = {**shard_stats(rows, text_column), "repaired_utf8_cells": repaired}
        stats = {"unit": {k: unit[k] for k in ("path", "label", "start", "stop")}, "fingerprint": fingerprint,
                 "provider": unit["provider"], "node": unit["node"], **counts}
        rows = rows.replace_schema_metadata({**(rows.schema.metadata or {}), STATS_KEY: json.dumps(stats).encode()})
        write_durably(fs, f"{out}/{unit['name']}", lambda sink: pq.write_table(rows, sink, compression="zstd"))
        done.append({"name": unit["name"], "stats": json.dumps(stats)})
    return pa.Table.from_pylist(done)


def _valid_utf8(rows: pa.Table) -> tuple[pa.Table, int]:
    """The rows with every string cell made valid UTF-8 (U+FFFD for bad bytes), and how many cells that changed.

    A string column holding bytes that are not UTF-8 is not valid Parquet: pandas and pyarrow's converters
    fail on the whole file. Such a text row already carries an `error`; its text is kept, repaired, so that
    the output reads anywhere, and the input still has the original bytes at its `row_id`.
    """
    repaired = 0
    for i, name in enumerate(rows.column_names):
        col = rows.column(i)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            continue
        try:
            col.validate(full=True)
        except pa.ArrowInvalid:
            raw = col.combine_chunks().view(pa.large_binary() if pa.types.is_large_string(col.type) else pa.binary()).to_pylist()
            fixed = [None if b is None else b.decode("utf-8", "replace") for b in raw]
            repaired += sum(b is not None and f.encode() != b for b, f in zip(raw, fixed))
            rows = rows.set_column(i, name, pa.array(fixed, col.type))
    return rows, repaired


def shard_stats(rows: pa.Table, text_column: str) -> dict:
    """A committed shard's counts for _run.json: rows, errors by kind, tokens, and the quality counts."""
    errors = rows.column("error").to_pylist()
    quality = QualityCounts()
    ok = rows.filter(pc.is_null(rows.column("error")))
    for values in zip(*(ok.column(c).to_pylist() for c in (text_column, "translation", "src_tokens", "tgt_tokens"))):
        quality.add(*values)
    return {"rows": rows.num_rows, "errors": sum(e is not None for e in errors), "error_kinds": _error_kinds(errors),
            "src_tokens": int(pc.sum(rows.column("src_tokens")).as_py() or 0),
            "tgt_tokens": int(pc.sum(rows.column("tgt_tokens")).as_py() or 0), "quality": quality.counts()}


def _error_kinds(errors: list) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for e in errors:
        if e is not None:
            key = e.split(" (")[0].split(":")[0].split(";")[0] if not e.startswith("input has") else "input over max_input_tokens"
            kinds[key] = kinds.get(key, 0) + 1
    return kinds


# ---------------------------------------------------------------- the driver

IO_RESERVE = 0.5  # CPUs each node keeps free for the read and commit tasks
IO_TASK_CPUS = 0.25  # what one read or commit task asks for: they mostly wait on storage


def size_actor_pool(cfg: TranslateConfig, node_cpus: list[float], node_gpus: list[float]) -> tuple[int, float, int]:
    """(actors, CPUs per actor, onnxruntime threads per actor) for a cluster with these nodes.

    An actor pool that takes every CPU starves the read and commit tasks and the job hangs, so each node
    keeps IO_RESERVE CPUs back. By default the rest goes to one-thread actors, one per core: measured on
    2 cores, two 1-thread processes translate 1.4x faster than one process with 2 threads (the search's
    numpy work and small matrices do not split across threads well). Hence 0.75 CPU each on a 2-core node.
    """
    if cfg.gpus_per_actor:
        per_cpu = cfg.cpus_per_actor or 1.0
        fit = sum(int(g // cfg.gpus_per_actor) for g in node_gpus)
        return cfg.actors or max(1, fit), per_cpu, max(1, int(per_cpu))
    largest = max(node_cpus, default=1.0)
    per_cpu = cfg.cpus_per_actor or max(0.25, 1.0 - IO_RESERVE / largest)
    fit = sum(int((c - IO_RESERVE) / per_cpu + 1e-9) for c in node_cpus if c > IO_RESERVE)
    return cfg.actors or max(1, fit), per_cpu, max(1, int(per_cpu + 1e-9) if cfg.cpus_per_actor else 1)



def _describe_change(before: dict, now: dict) -> str:
    """What differs between the settings an output was started with and these, in words."""
    old = {f["path"]: f for f in before.get("inputs", []) if isinstance(f, dict)}
    for f in now["inputs"]:
        o = old.pop(f["path"], None)
        if o is None:
            return f"{f['path']} was not among its inputs"
        if (o.get("size"), o.get("mtime_ns")) != (f["size"], f["mtime_ns"]):
            when = lambda ns: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime((ns or 0) / 1e9))  # noqa: E731
            return (f"{f['path']} changed since the run started (size {o.get('size')} -> {f['size']} bytes, "
                    f"modified {when(o.get('mtime_ns'))} -> {when(f['mtime_ns'])} UTC)")
    if old:
        return f"{sorted(old)[0]} is no longer among the inputs"
    keys = sorted(k for k in now if k != "inputs" and now[k] != before.get(k))
    return "other " + ", ".join(keys or ["settings"]) + f" ({', '.join(f'{k}={before.get(k)!r}' for k in keys)})"


def _prepare_output(cfg: TranslateConfig, units: list[dict], job: dict) -> dict[str, dict]:
    """Check the output folder (this run holds its lease); return the verified parts already there, by name.

    Nothing is deleted but by --overwrite in a folder this job wrote, leftovers of killed writes (`_tmp-`)
    and parts that fail verification, which are moved to `_rejected/` and redone.
    """
    fs, out = filesystem(cfg.output)
    info = fs.get_file_info(out)
    if info.type == pafs.FileType.File:
        raise JobError(f"{cfg.output}: is a file; --output must be a folder")
    existing = [i for i in fs.get_file_info(pafs.FileSelector(out)) if Path(i.path).name != LEASE_FILE]
    if existing and not (cfg.overwrite or cfg.resume):
        raise JobError(f"{cfg.output}: not empty. Pass --resume to finish an earlier run there, or --overwrite to start over.")
    before = read_json(fs, f"{out}/{JOB_FILE}")
    if existing and before is None:
        raise JobError(f"{cfg.output}: has files but no {JOB_FILE}, so it was not written by s2s-job translate, and neither "
                       "--resume nor --overwrite touches it. Choose another --output.")
    if cfg.overwrite:
        for i in existing:
            fs.delete_dir(i.path) if i.type == pafs.FileType.Directory else fs.delete_file(i.path)
        existing = []
    done: dict[str, dict] = {}
    if existing:  # --resume
        if before.get("fingerprint") != job["fingerprint"]:
            raise JobError(f"{cfg.output}: was written by a run with other inputs, model or settings: "
                           f"{_describe_change(before.get('settings', {}), job['settings'])}. --resume would mix them; "
                           "use --overwrite or another --output.")
        done = _verified_parts(fs, out, units, job["fingerprint"])
        for i in existing:  # leftovers of a killed write are never committed data
            if Path(i.path).name.startswith(TMP_PREFIX):
                fs.delete_file(i.path)
    fs.delete_dir_contents(f"{out}/{ATTEMPTS_DIR}", missing_dir_ok=True)  # a new run: earlier deaths were not the rows'
    fs.create_dir(f"{out}/{ATTEMPTS_DIR}")
    delete_if_present(fs, f"{out}/{SUCCESS_FILE}")
    write_json(fs, f"{out}/{JOB_FILE}", job)
    return done


def _verified_parts(fs: pafs.FileSystem, out: str, units: list[dict], fingerprint: str) -> dict[str, dict]:
    """The parts whose footer shows this run's fingerprint, their planned unit and its row count; the rest
    (short, empty, unreadable, another unit's or other settings') are moved to `_rejected/` to be redone."""
    planned = {u["name"]: u for u in units}
    done = {}
    for i in fs.get_file_info(pafs.FileSelector(out)):
        name = Path(i.path).name
        if not name.startswith("part-"):
            continue
        unit, why = planned.get(name), None
        try:
            with fs.open_input_file(i.path) as f:
                pf = pq.ParquetFile(f)
                stats, n = json.loads((pf.schema_arrow.metadata or {}).get(STATS_KEY, b"null")), pf.metadata.num_rows
        except (pa.ArrowInvalid, OSError, ValueError) as e:
            why = f"unreadable ({e})"
        else:
            if unit is None:
                why = "not a unit of this run"
            elif not stats or stats.get("fingerprint") != fingerprint:
                why = "written with other settings, or by an older version"
            elif stats["unit"] != {k: unit[k] for k in ("path", "label", "start", "stop")}:
                why = "holds another unit's rows"
            elif not n == stats["rows"] == unit["stop"] - unit["start"]:
                why = f"has {n} rows where {unit['stop'] - unit['start']} were planned"
        if why:
            fs.create_dir(f"{out}/_rejected", recursive=True)
            fs.move(i.path, f"{out}/_rejected/{name}")
            say(f"{name}: {why}; moved to _rejected/ and redone")
        else:
            done[name] = stats
    return done


def run_translate(cfg: TranslateConfig) -> dict:
    """Translate every row of the input into the output folder; return (and write) the run summary."""
    from s2s.export.runtime import load_model_dir

    t0 = time.time()
    model_dir = load_model_dir(cfg.model)  # fails at once, naming the file, before any work starts
    if cfg.device == "cuda" and not os.environ.get("RAY_ADDRESS"):
        choose_providers("cuda")  # local run: the actors will run here, so fail now, not inside Ray
    fs, files = list_inputs(cfg.input)
    units = plan_units(fs, files, cfg)
    settings = {"model": absolute(cfg.model),
                "inputs": [{k: f[k] for k in ("path", "size", "mtime_ns")} for f in files], "text_column": cfg.text_column, "id_column": cfg.id_column, "rows_per_shard": cfg.rows_per_shard,
                "decode": dataclasses.asdict(cfg.decode), "variant": cfg.variant}
    fingerprint = hashlib.sha256(json.dumps({**settings, "model_files": model_dir.manifest["files"]}, sort_keys=True).encode()).hexdigest()
    lease = Lease(cfg.output)
    lease.acquire()
    try:
        return _run(cfg, units, {"fingerprint": fingerprint, "settings": settings}, model_dir.manifest, t0)
    finally:
        lease.release()


def _run(cfg: TranslateConfig, units: list[dict], job: dict, manifest: dict, t0: float) -> dict:
    done = _prepare_output(cfg, units, job)
    todo = [u for u in units if u["name"] not in done]
    say(f"{len({u['path'] for u in units})} input file(s), {sum(u['stop'] - u['start'] for u in units):,} rows in {len(units)} "
        f"shard(s); {len(done)} already committed, {len(todo)} to do")
    fs, out = filesystem(cfg.output)
    previous = read_json(fs, f"{out}/{RUN_FILE}")
    if not todo and previous and previous.get("status") in ("complete", "failed_error_rate"):
        summary = {**previous, **_status(True, previous["rows"], previous["errors"], cfg.max_error_rate)}
        if summary != previous:  # the gate was changed: the outcome is judged again
            write_json(fs, f"{out}/{RUN_FILE}", summary)
        if summary["status"] == "complete":
            write_json(fs, f"{out}/{SUCCESS_FILE}", {})
        say(f"nothing to do: all {len(units)} shards are already in {cfg.output}; status {summary['status']}")
        return {**summary, "nothing_to_do": True}

    now: list[dict] = []
    phases = {"prepare_s": time.time() - t0}
    failed = True
    try:
        if todo:
            now = _translate_on_ray(cfg, todo, job["fingerprint"], phases, t0)
        failed = False
    finally:  # a failed run still records what it committed, as incomplete
        summary = _summarize(cfg, units, done, now, time.time() - t0, manifest, failed)
        summary["phase_seconds"] = {k: round(v, 2) for k, v in phases.items()}  # where wall_seconds went
        write_json(fs, f"{out}/{RUN_FILE}", summary)
    if summary["status"] == "complete":
        write_json(fs, f"{out}/{SUCCESS_FILE}", {})
    return summary


def _translate_on_ray(cfg: TranslateConfig, todo: list[dict], fingerprint: str, phases: dict, t0: float) -> list[dict]:
    """Wire read -> translate -> commit over the units to do; return each committed part's name and stats."""
    import ray

    started = init_ray(dashboard=False)  # Ray Data needs no state API; the dashboard costs CPU the actors could use
    if not cfg.verbose:  # one progress line of ours instead of Ray Data's multi-line reports every 10 s
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "Progress bars disabled. To enable, ..."
    phases["ray_start_s"] = time.time() - t0 - phases["prepare_s"]
    nodes, addable = node_shapes()
    placed = work_resources(nodes)  # where the head marks itself, actors go to worker nodes only
    # Size the pool for the worker nodes alive; a cluster that starts with none sizes it for one node the
    # autoscaler can add (or, where its config is not published, for 1-CPU actors) and waits for that node.
    hosts = [n for n in nodes if not is_head(n)] or [n for n in addable if not is_head(n)][:1]
    actors, cpus_per_actor, threads = size_actor_pool(cfg, [n.get("CPU", 0.0) for n in hosts], [n.get("GPU", 0.0) for n in hosts])
    actors = min(actors, len(todo))
    # On a cluster the pool grows while units queue, as far as there are units: each actor Ray cannot place yet
    # is demand the cluster's autoscaler answers with a node, and idle actors go, so idle nodes can go too.
    # A local run keeps the measured fixed pool: there is no node to add.
    # Its ceiling is what the worker nodes the autoscaler may run can hold, where their types are known.
    most = len(todo) if started != "local cluster" and not cfg.actors else actors
    ceiling = [n for n in addable if not is_head(n)]
    if most > actors and ceiling:
        most = max(actors, min(most, size_actor_pool(cfg, [n.get("CPU", 0.0) for n in ceiling], [n.get("GPU", 0.0) for n in ceiling])[0]))
    pool = ray.data.ActorPoolStrategy(size=actors) if most <= actors else ray.data.ActorPoolStrategy(min_size=actors, max_size=most)
    say(f"Ray: {sum(n.get('CPU', 0.0) for n in nodes):g} CPUs on {len(nodes)} node(s)"
          f"{'; the head takes no actors' if placed else ''}; {actors} translate actor(s)"
          f"{f' (up to {most} as the cluster scales)' if most > actors else ''} x "
          f"{cpus_per_actor:.3g} CPU{f' + {cfg.gpus_per_actor:g} GPU' if cfg.gpus_per_actor else ''}, "
          f"{threads} onnxruntime thread(s) each")
    committed: list[dict] = []
    t_data = time.time()
    progress = Progress(sum(u["stop"] - u["start"] for u in todo), "rows")
    rows = errors = 0
    try:
        with relayed(progress.console) as relay:
            # paths go to the workers absolute (or as URIs): the workers may run on other nodes
            ds = ray.data.from_items(todo, override_num_blocks=len(todo))
            ds = ds.map_batches(read_texts, batch_size=None, batch_format="pyarrow", num_cpus=IO_TASK_CPUS,
                                fn_kwargs={"text_column": cfg.text_column})
            # A dead actor is replaced and its unit retried: Ray Data's default for actor pools (tests/test_translate_faults.py).
            ds = ds.map_batches(TranslateBatch, batch_size=None, batch_format="pyarrow", compute=pool,
                                num_cpus=cpus_per_actor, num_gpus=cfg.gpus_per_actor or None, resources=placed or None,
                                fn_constructor_kwargs={"model": absolute(cfg.model), "output": absolute(cfg.output), "decode": cfg.decode,
                                                       "variant": cfg.variant, "device": cfg.device, "threads": threads, "relay": relay})
            ds = ds.map_batches(commit_shard, batch_size=None, batch_format="pyarrow", num_cpus=IO_TASK_CPUS,
                                fn_kwargs={"output": absolute(cfg.output), "id_column": cfg.id_column, "text_column": cfg.text_column,
                                           "fingerprint": fingerprint})
            for row in ds.iter_rows():
                committed.append(row)
                stats = json.loads(row["stats"])
                rows, errors = rows + stats["rows"], errors + stats["errors"]
                progress.update(rows, f"{errors:,} error(s), {len(committed)}/{len(todo)} shards", final=len(committed) == len(todo))
    finally:
        phases["translate_s"] = time.time() - t_data
        if started == "local cluster":  # now rather than at exit, where Ray's hook first sleeps 0.5 s for log lines
            ray.shutdown()
            phases["ray_stop_s"] = time.time() - t_data - phases["translate_s"]
    return committed


def _status(complete: bool, rows: int, errors: int, max_error_rate: float) -> dict:
    """The run's outcome: complete, failed_error_rate (exit 1 until the gate is raised) or incomplete (exit 3)."""
    rate = round(errors / rows, 6) if rows else 0.0
    status = "incomplete" if not complete else "failed_error_rate" if rate > max_error_rate else "complete"
    return {"status": status, "complete": complete, "error_rate": rate, "max_error_rate": max_error_rate}


def _summarize(cfg: TranslateConfig, units: list[dict], done: dict[str, dict], now: list[dict], wall: float, manifest: dict,
               failed: bool = False) -> dict:
    """Counts over every verified part (earlier attempts included); speed over this attempt's parts."""
    fresh = {r["name"]: json.loads(r["stats"]) for r in now}
    parts = {**done, **fresh}
    rows = errors = src_tokens = tgt_tokens = repaired = 0
    kinds: dict[str, int] = {}
    quality = QualityCounts()
    for counts in parts.values():
        rows, errors = rows + counts["rows"], errors + counts["errors"]
        src_tokens, tgt_tokens = src_tokens + counts["src_tokens"], tgt_tokens + counts["tgt_tokens"]
        quality.add_counts(counts["quality"])
        repaired += counts.get("repaired_utf8_cells", 0)
        for k, v in counts["error_kinds"].items():
            kinds[k] = kinds.get(k, 0) + v
    if cfg.reference_column:  # corpus BLEU needs the texts themselves
        fs, out = filesystem(cfg.output)
        names = ["error", "translation", cfg.reference_column]
        for name in sorted(parts):
            with fs.open_input_file(f"{out}/{name}") as f:
                t = pq.read_table(f, columns=names)
            for err, hyp, ref in zip(*(t.column(c).to_pylist() for c in names)):
                if err is None and (refs := as_references(ref)):
                    quality.add_references(hyp, refs)
    rows_now = sum(s["rows"] for s in fresh.values())
    tokens_now = sum(s["tgt_tokens"] for s in fresh.values())
    complete = not failed and all(u["name"] in parts for u in units)
    return {
        "input": cfg.input, "output": cfg.output, "model": cfg.model,
        "model_sha256": hashlib.sha256(json.dumps(manifest["files"], sort_keys=True).encode()).hexdigest(),
        **_status(complete, rows, errors, cfg.max_error_rate),
        "shards_total": len(units), "shards_committed": len(parts), "shards_done_before": len(done), "shards_done_now": len(fresh),
        "rows_total": sum(u["stop"] - u["start"] for u in units),
        "rows": rows, "translated": rows - errors, "errors": errors, "error_kinds": kinds,
        "src_tokens": src_tokens, "tgt_tokens": tgt_tokens, "repaired_utf8_cells": repaired,
        "rows_this_run": rows_now, "wall_seconds": round(wall, 2),
        "sentences_per_s": round(rows_now / wall, 2) if wall else 0.0, "tokens_per_s": round(tokens_now / wall, 2) if wall else 0.0,
        "providers": sorted({s["provider"] for s in fresh.values()}), "nodes": sorted({s["node"] for s in fresh.values()}), "decode": dataclasses.asdict(cfg.decode),
        "quality": quality.signals(),
        "model_manifest": {k: manifest.get(k) for k in ("created", "exporter", "opset", "default_cpu_variant", "vocab_sizes", "limits")},
        "versions": library_versions(),
    }
