"""`s2s-job translate`: Parquet in, Parquet out, on Ray Data with onnxruntime actors. Every row exactly once.

The driver lists the input files and cuts them into units (row ranges of one file), then wires

    from_items(units) -> map_batches(read_unit)           tasks: pyarrow reads the rows, adds the id
                      -> map_batches(TranslateBatch)      actor pool: loads the model once, translates
                      -> map_batches(commit_shard)        tasks: write part-<unit>.parquet atomically

Why not `read_parquet`/`write_parquet`: the default id needs each row's position in its file, which
`read_parquet` does not give, and exactly-once needs one output file per input unit committed with a
rename, which `write_parquet` does not do. A committed part file is the record that its unit is done,
so `--resume` skips it and a killed run never leaves half a shard.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from s2s.cluster import init_ray
from s2s.export.runtime import choose_providers, library_versions
from s2s.quality import QualityCounts, as_references
from s2s.translator import DecodeConfig

log = logging.getLogger(__name__)

RESULT_COLUMNS = ("translation", "score", "src_tokens", "tgt_tokens", "error")
JOB_FILE = "_job.json"
RUN_FILE = "run.json"
STATS_KEY = b"s2s_stats"  # a committed part's counts, in its Parquet footer (`commit_shard`)


class JobError(ValueError):
    """A run that cannot start: the message names the input, column or directory and what to do."""


@dataclass(frozen=True)
class TranslateConfig:
    input: str  # a Parquet file, a folder of shards, or a glob; local or any pyarrow URI (s3://, gs://)
    output: str  # folder for the output shards and run.json
    model: str = "models/eng-fra"  # exported model directory
    text_column: str = "text"
    id_column: str | None = None  # None: add `row_id` = "<file>#<row>"
    reference_column: str | None = None  # references (a string or a list of strings): adds BLEU/chrF to run.json
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


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for a local path or a URI (s3://, gs://), and the path within it."""
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), str(Path(path).resolve())


def list_inputs(spec: str) -> tuple[pafs.FileSystem, list[str]]:
    """The Parquet files named by a file, a folder (searched recursively) or a glob, sorted."""
    fs, path = filesystem(spec)
    if any(ch in path for ch in "*?["):
        base = path[: min(path.index(ch) for ch in "*?[" if ch in path)].rsplit("/", 1)[0] or "/"
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        files = sorted(i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, path))
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise JobError(f"{spec}: no such input. Pass a Parquet file, a folder of shards or a glob.")
        if info.type == pafs.FileType.File:
            files = [path]
        else:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            files = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")
                           and not any(part.startswith(("_", ".")) for part in Path(i.path).relative_to(path).parts))
    if not files:
        raise JobError(f"{spec}: no Parquet files found there.")
    return fs, files


def plan_units(fs: pafs.FileSystem, files: list[str], cfg: TranslateConfig) -> list[dict]:
    """Check every file's footer (readable, has the columns) and cut it into row ranges."""
    units = []
    for f in files:
        try:
            with fs.open_input_file(f) as handle:
                meta = pq.ParquetFile(handle)
                names, n_rows = meta.schema_arrow.names, meta.metadata.num_rows
        except (pa.ArrowInvalid, OSError) as e:
            raise JobError(f"{f}: not a readable Parquet file ({e}). Fix or remove it, then run again.") from e
        for col, flag in ((cfg.text_column, "--text-column"), (cfg.id_column, "--id-column"), (cfg.reference_column, "--reference-column")):
            if col and col not in names:
                raise JobError(f"{f}: no column {col!r}; it has {names}. Name the right one with {flag}.")
        if not cfg.id_column and "row_id" in names:
            raise JobError(f"{f}: already has a column 'row_id'; pass --id-column row_id to use it as the id.")
        key = hashlib.sha1(f.encode()).hexdigest()[:12]
        for start in range(0, n_rows, cfg.rows_per_shard):
            units.append({"path": f, "start": start, "stop": min(n_rows, start + cfg.rows_per_shard),
                          "name": f"part-{key}-{start:010d}.parquet", "file_label": Path(f).name})
    return units


# ---------------------------------------------------------------- the three stages (Ray tasks and actors)


_LAST_ROW_GROUP: dict[tuple, pa.Table] = {}  # the row group this worker process decoded last


def _row_group(pf: pq.ParquetFile, key: tuple, rg: int) -> pa.Table:
    """Decode a row group, or reuse it: Parquet cannot read rows k..k+n without decoding the group from its
    start, and writers make groups of up to a million rows, so without this a file with one big group would
    be decoded once per unit (quadratic; measured: a read task ate half a core on a 100k-row file)."""
    if key + (rg,) not in _LAST_ROW_GROUP:
        _LAST_ROW_GROUP.clear()
        _LAST_ROW_GROUP[key + (rg,)] = pf.read_row_group(rg)
    return _LAST_ROW_GROUP[key + (rg,)]


def read_unit(batch: pa.Table, id_column: str | None) -> pa.Table:
    """Read the rows of each unit in `batch`; tag them with the unit and a stable id."""
    tables = []
    for unit in batch.to_pylist():
        fs, path = filesystem(unit["path"])
        info = fs.get_file_info(path)
        with fs.open_input_file(path) as handle:
            pf = pq.ParquetFile(handle)
            parts, offset = [], 0
            for rg in range(pf.num_row_groups):
                n = pf.metadata.row_group(rg).num_rows
                if offset + n > unit["start"] and offset < unit["stop"]:
                    t = _row_group(pf, (path, info.size, info.mtime_ns), rg)
                    parts.append(t.slice(max(0, unit["start"] - offset), unit["stop"] - max(offset, unit["start"])))
                offset += n
        table = pa.concat_tables(parts) if parts else pa.table({})
        if not id_column:
            table = table.append_column("row_id", pa.array([f"{unit['file_label']}#{i}" for i in range(unit["start"], unit["stop"])]))
        tables.append(table.append_column("_unit", pa.array([unit["name"]] * table.num_rows)))
    return pa.concat_tables(tables, promote_options="default")


class TranslateBatch:
    """Ray Data actor: loads the model directory once, then translates whole units."""

    def __init__(self, model: str, text_column: str, decode: DecodeConfig, variant: str, device: str, threads: int):
        from s2s.export.runtime import load_translator

        logging.basicConfig(level=logging.INFO)
        self.translator = load_translator(model, decode, variant, device, threads)
        self.text_column, self.nbest = text_column, decode.nbest
        print(f"translate actor pid {os.getpid()}: onnxruntime provider {self.translator.engine.provider}, "
              f"variant {self.translator.engine.variant}{' with the vocabulary map' if self.translator.engine.use_vmap else ''}, "
              f"{threads} thread(s)", flush=True)
        _fault_hook("init")

    def _safe_translate(self, texts: list) -> list:
        """Translate; where a batch raises, split it until the failing rows are found and flagged."""
        from s2s.translator import Translation

        try:
            return self.translator.translate(texts)
        except Exception as e:  # noqa: BLE001 - one bad row must not cost the others
            if len(texts) == 1:
                return [Translation(None, None, 0, 0, error=f"{type(e).__name__}: {e}")]
            mid = len(texts) // 2
            return self._safe_translate(texts[:mid]) + self._safe_translate(texts[mid:])

    def __call__(self, batch: pa.Table) -> pa.Table:
        _fault_hook("call")
        results = self._safe_translate(batch.column(self.text_column).to_pylist())
        out = batch
        for name, typ, values in (
            ("translation", pa.string(), [r.translation for r in results]),
            ("score", pa.float64(), [r.score for r in results]),
            ("src_tokens", pa.int32(), [r.src_tokens for r in results]),
            ("tgt_tokens", pa.int32(), [r.tgt_tokens for r in results]),
            ("error", pa.string(), [r.error for r in results]),
        ):
            out = out.append_column(name, pa.array(values, typ))
        if self.nbest > 1:
            nbest_type = pa.list_(pa.struct([("translation", pa.string()), ("score", pa.float64())]))
            out = out.append_column("nbest", pa.array([[{"translation": t, "score": s} for t, s in r.nbest] for r in results], nbest_type))
        return out.append_column("_provider", pa.array([self.translator.engine.provider] * out.num_rows))


def commit_shard(batch: pa.Table, output: str, text_column: str) -> pa.Table:
    """Write each unit's rows to part-<unit>.parquet via a temporary name and a rename.

    Each part carries its own counts (`shard_stats`) in its Parquet footer, so run.json sums footers over
    every committed part (earlier attempts included) instead of reading a million rows back on the
    driver (11.5 s at 1M rows, after Ray had finished). Returns what the driver needs for this attempt's speed.
    """
    fs, out = filesystem(output)
    stats = []
    for name in sorted(set(batch.column("_unit").to_pylist())):
        rows = batch.filter(pc.equal(batch.column("_unit"), name))
        provider = rows.column("_provider")[0].as_py()
        rows = rows.drop_columns(["_unit", "_provider"])
        counts = shard_stats(rows, text_column)
        rows = rows.replace_schema_metadata({**(rows.schema.metadata or {}), STATS_KEY: json.dumps(counts).encode()})
        tmp = f"{out}/_tmp-{uuid.uuid4().hex}-{name}"
        with fs.open_output_stream(tmp) as sink:
            pq.write_table(rows, sink, compression="zstd")
        fs.move(tmp, f"{out}/{name}")
        stats.append({"unit": name, "rows": rows.num_rows, "tgt_tokens": counts["tgt_tokens"], "provider": provider})
    return pa.Table.from_pylist(stats)


def shard_stats(rows: pa.Table, text_column: str) -> dict:
    """A committed shard's counts for run.json: rows, errors by kind, tokens, and the quality counts."""
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
            key = e.split(" (")[0].split(":")[0] if not e.startswith("input has") else "input over max_input_tokens"
            kinds[key] = kinds.get(key, 0) + 1
    return kinds


def _fault_hook(where: str) -> None:
    """Test-only fault injection (S2S_FAULT=die_once:<marker file> or delay:<seconds>); unset in real runs."""
    spec = os.environ.get("S2S_FAULT", "")
    if where == "call" and spec.startswith("die_once:"):
        marker = Path(spec.split(":", 1)[1])
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)  # the actor process dies mid-batch, as on a lost node
    if where == "call" and spec.startswith("delay:"):
        time.sleep(float(spec.split(":", 1)[1]))


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



def _prepare_output(cfg: TranslateConfig, job: dict) -> set[str]:
    """Check the output folder; return the units already committed (with --resume)."""
    fs, out = filesystem(cfg.output)
    info = fs.get_file_info(out)
    existing = []
    if info.type == pafs.FileType.Directory:
        existing = [i for i in fs.get_file_info(pafs.FileSelector(out)) if i.type == pafs.FileType.File]
    elif info.type == pafs.FileType.File:
        raise JobError(f"{cfg.output}: is a file; --output must be a folder")
    if existing and not (cfg.overwrite or cfg.resume):
        raise JobError(f"{cfg.output}: not empty. Pass --resume to finish an earlier run there, or --overwrite to start over.")
    if cfg.overwrite:
        fs.delete_dir_contents(out, missing_dir_ok=True)
        existing = []
    fs.create_dir(out, recursive=True)
    done = set()
    if existing and cfg.resume:
        if fs.get_file_info(f"{out}/{JOB_FILE}").type != pafs.FileType.File:
            raise JobError(f"{cfg.output}: has files but no {JOB_FILE}, so it was not written by s2s-job translate; "
                           "choose another --output, or --overwrite to empty it.")
        with fs.open_input_stream(f"{out}/{JOB_FILE}") as f:
            before = json.loads(f.read())
        if before.get("fingerprint") != job["fingerprint"]:
            raise JobError(f"{cfg.output}: was written with other inputs, model or settings ({before.get('settings')}); "
                           "--resume would mix them. Use --overwrite or another --output.")
        done = {Path(i.path).name for i in existing if Path(i.path).name.startswith("part-")}
    for i in existing:  # leftovers of a killed write are never committed data
        if Path(i.path).name.startswith("_tmp-"):
            fs.delete_file(i.path)
    with fs.open_output_stream(f"{out}/{JOB_FILE}") as f:
        f.write(json.dumps(job, indent=2).encode())
    return done


def run_translate(cfg: TranslateConfig) -> dict:
    """Translate every row of the input into the output folder; return (and write) the run summary."""
    import ray

    from s2s.export.runtime import load_model_dir

    t0 = time.time()
    model_dir = load_model_dir(cfg.model)  # fails at once, naming the file, before any work starts
    if cfg.device == "cuda" and not os.environ.get("RAY_ADDRESS"):
        choose_providers("cuda")  # local run: the actors will run here, so fail now, not inside Ray
    fs, files = list_inputs(cfg.input)
    units = plan_units(fs, files, cfg)
    settings = {"model": str(Path(cfg.model).resolve()), "model_files": model_dir.manifest["files"], "inputs": files,
                "text_column": cfg.text_column, "id_column": cfg.id_column, "rows_per_shard": cfg.rows_per_shard,
                "decode": dataclasses.asdict(cfg.decode), "variant": cfg.variant}
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    done = _prepare_output(cfg, {"fingerprint": fingerprint, "settings": {k: v for k, v in settings.items() if k != "model_files"}})
    todo = [u for u in units if u["name"] not in done]
    print(f"{len(files)} input file(s), {sum(u['stop'] - u['start'] for u in units)} rows in {len(units)} shard(s); "
          f"{len(done)} already committed, {len(todo)} to do", flush=True)
    if not todo and _exists(cfg.output, RUN_FILE):
        print(f"nothing to do: all {len(units)} shards are already in {cfg.output} (its run.json is kept)", flush=True)
        return {**_read_run_json(cfg), "nothing_to_do": True}

    stats: list[dict] = []
    phases = {"prepare_s": time.time() - t0}
    if todo:
        started = init_ray(dashboard=False)  # Ray Data needs no state API; the dashboard costs CPU the actors could use
        phases["ray_start_s"] = time.time() - t0 - phases["prepare_s"]
        nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
        actors, cpus_per_actor, threads = size_actor_pool(cfg, [n.get("CPU", 0.0) for n in nodes], [n.get("GPU", 0.0) for n in nodes])
        actors = min(actors, len(todo))
        print(f"Ray: {sum(n.get('CPU', 0.0) for n in nodes):g} CPUs on {len(nodes)} node(s); {actors} translate actor(s) x "
              f"{cpus_per_actor:.3g} CPU{f' + {cfg.gpus_per_actor:g} GPU' if cfg.gpus_per_actor else ''}, "
              f"{threads} onnxruntime thread(s) each", flush=True)
        ds = ray.data.from_items(todo, override_num_blocks=len(todo))
        ds = ds.map_batches(read_unit, batch_size=None, batch_format="pyarrow", num_cpus=IO_TASK_CPUS,
                            fn_kwargs={"id_column": cfg.id_column})
        ds = ds.map_batches(TranslateBatch, batch_size=None, batch_format="pyarrow", concurrency=actors,
                            num_cpus=cpus_per_actor, num_gpus=cfg.gpus_per_actor or None,
                            fn_constructor_kwargs={"model": str(Path(cfg.model).resolve()) if "://" not in cfg.model else cfg.model,
                                                   "text_column": cfg.text_column, "decode": cfg.decode, "variant": cfg.variant,
                                                   "device": cfg.device, "threads": threads})
        # A dead actor is replaced and its batch retried: Ray Data's default for actor pools (max_restarts=-1,
        # max_task_retries=-1; passing them ourselves is deprecated), tested in tests/test_translate_ray.py.
        ds = ds.map_batches(commit_shard, batch_size=None, batch_format="pyarrow", num_cpus=IO_TASK_CPUS,
                            fn_kwargs={"output": str(Path(cfg.output).resolve()) if "://" not in cfg.output else cfg.output,
                                       "text_column": cfg.text_column})
        t_data = time.time()
        try:
            for row in ds.iter_rows():
                stats.append(row)
        finally:
            phases["translate_s"] = time.time() - t_data
            if started == "local cluster":  # now rather than at exit, where Ray's hook first sleeps 0.5 s for log lines
                ray.shutdown()
                phases["ray_stop_s"] = time.time() - t_data - phases["translate_s"]
    summary = _summarize(cfg, stats, len(units), len(done), time.time() - t0, model_dir.manifest)
    summary["phase_seconds"] = {k: round(v, 2) for k, v in phases.items()}  # where wall_seconds went
    _write_run_json(cfg, summary)
    return summary


def _summarize(cfg: TranslateConfig, stats: list[dict], n_units: int, n_skipped: int, wall: float, manifest: dict) -> dict:
    """Counts over every committed shard (earlier attempts included); speed over this attempt's shards."""
    fs, out = filesystem(cfg.output)
    parts = [i.path for i in fs.get_file_info(pafs.FileSelector(out)) if Path(i.path).name.startswith("part-")]
    rows = errors = src_tokens = tgt_tokens = 0
    kinds: dict[str, int] = {}
    quality = QualityCounts()
    for p in parts:
        with fs.open_input_file(p) as f:
            pf = pq.ParquetFile(f)
            stored = (pf.schema_arrow.metadata or {}).get(STATS_KEY)
            counts = json.loads(stored) if stored else shard_stats(pf.read(), cfg.text_column)  # parts from before footers had counts
            if cfg.reference_column:  # corpus BLEU needs the texts themselves
                names = ("error", "translation", cfg.reference_column)
                t = pf.read(columns=list(names))
                for err, hyp, ref in zip(*(t.column(c).to_pylist() for c in names)):
                    if err is None and (refs := as_references(ref)):
                        quality.add_references(hyp, refs)
        rows, errors = rows + counts["rows"], errors + counts["errors"]
        src_tokens, tgt_tokens = src_tokens + counts["src_tokens"], tgt_tokens + counts["tgt_tokens"]
        quality.add_counts(counts["quality"])
        for k, v in counts["error_kinds"].items():
            kinds[k] = kinds.get(k, 0) + v
    rows_now = sum(s["rows"] for s in stats)
    tokens_now = sum(s["tgt_tokens"] for s in stats)
    return {
        "input": cfg.input, "output": cfg.output, "model": cfg.model,
        "model_sha256": hashlib.sha256(json.dumps(manifest["files"], sort_keys=True).encode()).hexdigest(),
        "shards_total": n_units, "shards_committed": len(parts), "shards_done_before": n_skipped, "shards_done_now": len(stats),
        "complete": len(parts) == n_units,
        "rows": rows, "translated": rows - errors, "errors": errors, "error_kinds": kinds,
        "error_rate": round(errors / rows, 6) if rows else 0.0, "max_error_rate": cfg.max_error_rate,
        "src_tokens": src_tokens, "tgt_tokens": tgt_tokens,
        "rows_this_run": rows_now, "wall_seconds": round(wall, 2),
        "sentences_per_s": round(rows_now / wall, 2) if wall else 0.0, "tokens_per_s": round(tokens_now / wall, 2) if wall else 0.0,
        "providers": sorted({s["provider"] for s in stats}), "decode": dataclasses.asdict(cfg.decode),
        "quality": quality.signals(),
        "model_manifest": {k: manifest.get(k) for k in ("created", "exporter", "opset", "default_cpu_variant", "vocab_sizes", "limits")},
        "versions": library_versions(),
    }


def _exists(output: str, name: str) -> bool:
    fs, out = filesystem(output)
    return fs.get_file_info(f"{out}/{name}").type == pafs.FileType.File


def _read_run_json(cfg: TranslateConfig) -> dict:
    fs, out = filesystem(cfg.output)
    with fs.open_input_stream(f"{out}/{RUN_FILE}") as f:
        return json.loads(f.read())


def _write_run_json(cfg: TranslateConfig, summary: dict) -> None:
    fs, out = filesystem(cfg.output)
    tmp = f"{out}/_tmp-{uuid.uuid4().hex}-{RUN_FILE}"
    with fs.open_output_stream(tmp) as f:
        f.write(json.dumps(summary, indent=2).encode())
    fs.move(tmp, f"{out}/{RUN_FILE}")
