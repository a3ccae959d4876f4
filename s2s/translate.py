"""`s2s-job translate`: Parquet in, Parquet out, every row exactly once, on Ray Data or in this process.

    lease      s2s/lease.py     take the output folder's next epoch (another live run: exit 3)
    plan       s2s/inputs.py    list the input once, pin every file, check its footer, cut it into units
    prepare    s2s/commit.py    --overwrite empties the folder, --resume verifies every part already there
    translate  s2s/actor.py     Ray Data:  from_items(units) -> read_texts (tasks) -> TranslateBatch (actor
                                pool) -> commit (tasks); or, with --executor local, the same steps in a loop
    finish     s2s/status.py    _run.json, then _SUCCESS once a last listing shows exactly the verified parts

Each Ray Data stage passes one row per unit (its texts, or its results, as lists), so Ray Data's block
splitting never cuts a unit in two, and the pass-through columns, however wide, never travel through Ray
Data: the commit reads them from the input again, from the version the plan pinned.

Why not `read_parquet`/`write_parquet`, or Ray Data's checkpointing (docs/exactly-once.md): the default id
needs each row's position in its file, and exactly-once needs one part per unit, published only if absent,
fenced by the lease, and verified on resume.
"""

from __future__ import annotations

import dataclasses

import json
import logging
import os
import socket
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from s2s.actor import TranslateBatch, results_columns, translate_here
from s2s.cluster import init_ray, node_shapes, work_resources
from s2s.commit import (JOB_FILE, RUN_FILE, STAGING_DIR, SUCCESS_FILE, commit_unit, final_check, now_utc, open_folder, read_marker, remove_success,
                        verify_parts, write_marker, write_success)
from s2s.engine import choose_providers
from s2s.inputs import JobError, Plan, plan, read_texts
from s2s.lease import LEASE_DIR, Fence, Lease, LeaseHeld, LeaseLost
from s2s.placement import IO_TASK_CPUS, place_actors
from s2s.progress import Progress, relayed, say
from s2s.quality import QualityCounts, as_references
from s2s.status import fingerprint, run_record, summarize
from s2s.storage import absolute, filesystem
from s2s.config import TranslateConfig

log = logging.getLogger(__name__)

__all__ = ["JobError", "LeaseHeld", "LeaseLost", "TranslateConfig", "run_translate", "fill_template"]


def default_output(input: str) -> str:
    """outputs/<the input's name>, a glob's `*` read as `all`: where a run writes when no --output is given."""
    return str(Path("outputs") / Path(input.rstrip("/")).stem.replace("*", "all"))


def fill_template(path: str, values: dict[str, str | None]) -> str:
    """Fill `{date}`/`{partition}` in a path from the values a scheduler passes; refuse a hole left open."""
    for key, value in values.items():
        placeholder = "{" + key + "}"
        if placeholder in path:
            if not value:
                raise JobError(f"{path}: has {placeholder} but no --{key} was given")
            path = path.replace(placeholder, value)
    return path


# ---------------------------------------------------------------- the run


def run_translate(cfg: TranslateConfig) -> dict:
    """Translate every row of the input into the output folder; return (and write) the run's summary."""
    from s2s.engine import load_model_dir

    t0 = time.time()
    model_dir = load_model_dir(cfg.model)  # fails at once, naming the file, before any work starts
    if cfg.device == "cuda" and (cfg.executor == "local" or not os.environ.get("RAY_ADDRESS")):
        choose_providers("cuda")  # the engines will run on this machine: fail now, not inside Ray
    work = plan(cfg.input, cfg.text_column, cfg.rows_per_shard, cfg.names, cfg.id_column, cfg.reference_column, cfg.allow_duplicate_ids,
                cfg.target_prefix_column)
    if cfg.text_column is None:
        cfg = dataclasses.replace(cfg, text_column=work.text_column)
        say(f"{cfg.input}: translating column {cfg.text_column!r} (--text-column names another)")
    if work.skipped:
        say(f"{cfg.input}: {work.skipped}")
    _check_output(cfg)  # read-only: a folder that is not this job's is never written to, not even a lease
    lease = Lease(cfg.output, cfg.lease_seconds)
    lease.acquire()
    try:
        return _run(cfg, lease, work, model_dir.manifest, t0)
    except KeyboardInterrupt:
        if lease.lost:  # the renewal thread found the lease lost and interrupted the wait
            raise LeaseLost(lease.lost) from None
        raise
    except Exception as e:
        # A run that lost its lease while frozen may first fail on what the new owner removed (its staging files):
        # name the cause, not the symptom.
        if not isinstance(e, LeaseLost):
            try:
                lease.check()
            except LeaseLost as lost:
                raise lost from e
            except Exception:  # noqa: BLE001 - the store cannot be read: the original error says more
                pass
        raise
    finally:
        lease.release()


def _check_output(cfg: TranslateConfig) -> None:
    """Refuse, before taking the lease, an output that is a file, or a non-empty folder this job did not write."""
    fs, out = filesystem(cfg.output)
    info = fs.get_file_info(out)
    if info.type == pafs.FileType.File:
        raise JobError(f"{cfg.output}: is a file; --output must be a folder")
    if info.type != pafs.FileType.Directory:
        return
    names = {i.base_name for i in fs.get_file_info(pafs.FileSelector(out))} - {LEASE_DIR, STAGING_DIR}
    if names and not (cfg.overwrite or cfg.resume):
        raise JobError(f"{cfg.output}: not empty. Pass --resume to finish an earlier run there, or --overwrite to start over.")
    if names and JOB_FILE not in names:
        raise JobError(f"{cfg.output}: has files but no {JOB_FILE}, so it was not written by s2s-job translate, and neither "
                       "--resume nor --overwrite touches it. Choose another --output.")


def _run(cfg: TranslateConfig, lease: Lease, work: Plan, manifest: dict, t0: float) -> dict:
    folder = open_folder(cfg.output, lease.fence)
    folder.begin()
    remove_success(folder)  # whatever happens next, _SUCCESS no longer speaks for this folder
    names = cfg.names
    settings = {"model": absolute(cfg.model), "text_column": cfg.text_column, "id_column": cfg.id_column, "names": names,
                "rows_per_shard": cfg.rows_per_shard, "decode": cfg.decode.recorded(), "variant": cfg.variant,
                "target_prefix_column": cfg.target_prefix_column}
    job = {"fingerprint": fingerprint({**settings, "model_files": manifest["files"]}), "settings": settings, "names": names,
           "text_column": cfg.text_column, "id_column": cfg.id_column}
    done, previous = _prepare(folder, cfg, work, job)
    todo = [u for u in work.units if u["name"] not in done]
    say(f"{len(work.files)} input file(s), {sum(u['stop'] - u['start'] for u in work.units):,} rows in {len(work.units)} "
        f"shard(s); {len(done)} already committed, {len(todo)} to do")
    parts = {name: d["stats"] for name, d in done.items()}
    expected = {name: d["meta"] for name, d in done.items()}
    phases = {"prepare_s": time.time() - t0}
    failed = True
    try:
        if todo:
            run = _translate_on_ray if cfg.executor == "ray" else _translate_here
            for c in run(cfg, todo, folder, job, lease, phases, t0):
                parts[c["name"]], expected[c["name"]] = c["stats"], c["meta"]
        failed = False
    finally:  # a failed run still records what it committed, as incomplete
        complete = not failed and all(u["name"] in parts for u in work.units)
        problem = final_check(folder, expected) if complete else None
        summary = _summary(cfg, work, parts, set(parts) - set(done), complete and not problem, time.time() - t0, manifest, lease)
        if problem:
            summary["problem"] = f"the folder changed under this run: {problem}"
        summary["phase_seconds"] = {k: round(v, 2) for k, v in phases.items()}  # where wall_seconds went
        judged = ("status", "complete", "error_rate", "max_error_rate")
        if not todo and previous and all(previous.get(k) == summary[k] for k in ("rows", "errors", "shards_total")):
            # nothing done now: the record of how the work went stays, the outcome judged again (the gate may have moved)
            unchanged = all(previous.get(k) == summary[k] for k in judged)
            summary = {**previous, **{k: summary[k] for k in judged}, "nothing_to_do": True}
            say(f"nothing to do: all {len(work.units)} shards are already in {cfg.output}; status {summary['status']}")
        else:
            unchanged = False
        if not lease.lost and not unchanged:
            write_marker(folder, RUN_FILE, {k: v for k, v in summary.items() if k != "nothing_to_do"})
    if problem:
        raise LeaseLost(summary["problem"] + "; no _SUCCESS was written. Rerun with --resume.")
    if summary["status"] == "complete":
        write_success(folder, {"fingerprint": job["fingerprint"], "epoch": lease.epoch, "finished": now_utc(), "rows": summary["rows"],
                               "inputs": [{k: f[k] for k in ("path", "pin", "rows")} for f in work.files],
                               "parts": {name: stats["rows"] for name, stats in sorted(parts.items())}})
    return summary


def _prepare(folder, cfg: TranslateConfig, work: Plan, job: dict) -> tuple[dict, dict | None]:
    """Check the output folder (this run holds its lease); return the verified parts already there and the
    previous run's summary. Nothing is deleted but by --overwrite in a folder this job wrote, and parts that
    fail verification, which are moved to `_rejected/` and redone."""
    listing = folder.listing()
    before = read_marker(folder, JOB_FILE) if JOB_FILE in listing else None
    existing = {n: m for n, m in listing.items() if n not in (SUCCESS_FILE,)}
    if existing and not (cfg.overwrite or cfg.resume):
        raise JobError(f"{cfg.output}: not empty. Pass --resume to finish an earlier run there, or --overwrite to start over.")
    if existing and before is None:
        raise JobError(f"{cfg.output}: has files but no {JOB_FILE}, so it was not written by s2s-job translate, and neither "
                       "--resume nor --overwrite touches it. Choose another --output.")
    done, previous = {}, None
    if cfg.overwrite:
        for name, meta in existing.items():
            if name != JOB_FILE:  # removed last, by being replaced: an interrupted --overwrite leaves a folder the next run takes
                folder.remove(name, meta)
    elif existing:  # --resume
        if before.get("fingerprint") != job["fingerprint"]:
            raise JobError(f"{cfg.output}: was written by a run with another model or settings "
                           f"({_describe_change(before.get('settings', {}), job['settings'])}). --resume would mix them; "
                           "use --overwrite or another --output.")
        _say_input_changes(before.get("inputs", []), work.files)
        done, said = verify_parts(folder, work.units, job["fingerprint"], work.files)
        for line in said:
            say(line)
        previous = read_marker(folder, RUN_FILE)
        for name, meta in folder.listing().items():  # what a killed run of an older version left mid-write
            if name.startswith("_tmp-"):
                folder.remove(name, meta)
    write_marker(folder, JOB_FILE, {**{k: job[k] for k in ("fingerprint", "settings")}, "input": cfg.input, "epoch": folder.fence.epoch,
                                    "started": now_utc(), "inputs": [{k: f[k] for k in ("path", "pin")} for f in work.files]})
    return done, previous


def _say_input_changes(before: list[dict], files: list[dict]) -> None:
    """On --resume: which input files are new since the folder's last run, changed, or gone (one line each)."""
    old = {f["path"]: f.get("pin") for f in before if isinstance(f, dict)}
    new = [f["path"] for f in files if f["path"] not in old]
    changed = [f["path"] for f in files if f["path"] in old and old[f["path"]] != f["pin"]]
    gone = sorted(set(old) - {f["path"] for f in files})
    for paths, what in ((new, "new since the last run: translated now"), (changed, "changed since the last run: redone"),
                        (gone, "no longer among the inputs: their parts move to _rejected/")):
        if paths:
            say(f"{len(paths)} input file(s) {what} ({', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''})")


def _describe_change(before: dict, now: dict) -> str:
    keys = sorted(k for k in now if now[k] != before.get(k))
    return "other " + ", ".join(keys or ["settings"]) + f": {', '.join(f'{k}={before.get(k)!r}' for k in keys)}"


def _summary(cfg: TranslateConfig, work: Plan, parts: dict, fresh: set, complete: bool, wall: float, manifest: dict, lease: Lease) -> dict:
    references = None
    if cfg.reference_column and parts:  # corpus BLEU needs the texts themselves
        references = QualityCounts()
        folder = open_folder(cfg.output, lease.fence)
        listing = folder.listing()
        names = cfg.names
        for name in sorted(parts):
            with folder.open_part(name, listing[name]) as f:
                t = pq.read_table(f, columns=[names["error"], names["translation"], cfg.reference_column])
            for err, hyp, ref in zip(*(t.column(i).to_pylist() for i in range(3))):
                if err is None and (refs := as_references(ref)):
                    references.add_references(hyp, refs)
    summary = summarize(parts, fresh, work.units, complete, wall, cfg.max_error_rate, references)
    return run_record(cfg.input, cfg.output, cfg.model, manifest, cfg.decode, summary, cfg.names, lease.epoch, work.skipped)


# ---------------------------------------------------------------- executors


def _translate_here(cfg: TranslateConfig, todo: list[dict], folder, job: dict, lease: Lease, phases: dict, t0: float):
    """Each unit in turn in this process: read its texts, translate, commit."""
    from s2s.engine import load_translator, usable_cpus

    threads = int(cfg.cpus_per_actor) or usable_cpus()
    state: dict = {}
    progress = Progress(sum(u["stop"] - u["start"] for u in todo), "rows")
    rows = errors = 0
    t_data = time.time()
    try:
        for i, unit in enumerate(todo):
            read = read_texts(pa.Table.from_pylist([unit]), cfg.text_column, cfg.target_prefix_column).to_pylist()[0]
            results = translate_here(lambda: load_translator(cfg.model, cfg.decode, cfg.variant, cfg.device, threads), read["texts"],
                                     state, read.get("prefixes"))
            engine = state["translator"].translator.engine
            lease.check()
            c = commit_unit(folder, {**unit, "digest": read["digest"], "provider": engine.provider, "variant": engine.variant,
                                     "node": socket.gethostname()}, results_columns(results, cfg.decode), job)
            rows, errors = rows + c["stats"]["rows"], errors + c["stats"]["errors"]
            progress.update(rows, f"{errors:,} error(s), {i + 1}/{len(todo)} shards", final=i + 1 == len(todo))
            yield c
    finally:
        phases["translate_s"] = time.time() - t_data


def _ray_row(unit: dict) -> dict:
    """A unit as a Ray Data row: its pin as JSON, since pins differ in fields from one storage to another."""
    return {**unit, "pin": json.dumps(unit["pin"], sort_keys=True)}


def _unit(row: dict) -> dict:
    return {**row, "pin": json.loads(row["pin"]) if isinstance(row["pin"], str) else row["pin"]}


def read_texts_task(batch: pa.Table, text_column: str, prefix_column: str | None) -> pa.Table:
    """Ray Data task: `s2s.inputs.read_texts` over units whose pins travel as JSON."""
    units = pa.Table.from_pylist([_unit(r) for r in batch.select(["path", "pin", "start", "stop"]).to_pylist()])
    read = read_texts(units, text_column, prefix_column)
    out = batch.append_column("texts", read.column("texts")).append_column("digest", read.column("digest"))
    return out.append_column("prefixes", read.column("prefixes")) if prefix_column else out


def commit_task(batch: pa.Table, output: str, fence: Fence, job: dict) -> pa.Table:
    """Ray Data task: commit each unit whose results the actor pool returned (s2s.commit.commit_unit)."""
    folder = open_folder(output, fence)
    done = []
    for row in batch.to_pylist():
        unit = _unit(row)
        results = {k: unit.pop(k) for k in list(job["names"]) if k in unit and k != "row_id"}
        c = commit_unit(folder, unit, results, job)
        done.append({"name": c["name"], "stats": json.dumps(c["stats"]), "meta": json.dumps(c["meta"])})
    return pa.Table.from_pylist(done)


def _translate_on_ray(cfg: TranslateConfig, todo: list[dict], folder, job: dict, lease: Lease, phases: dict, t0: float):
    """Wire read -> translate -> commit over the units to do; yield each committed part as it lands."""
    import ray

    started = init_ray(dashboard=False)  # Ray Data needs no state API; the dashboard costs CPU the actors could use
    if not cfg.verbose:  # one progress line of ours instead of Ray Data's multi-line reports every 10 s
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "Progress bars disabled. To enable, ..."
    phases["ray_start_s"] = time.time() - t0 - phases["prepare_s"]
    nodes, addable = node_shapes()
    placed = work_resources(nodes)  # where the head marks itself, actors go to worker nodes only
    # A local run keeps the measured fixed pool: there is no node to add.
    p = place_actors(cfg, nodes, addable, len(todo), fixed=started == "local cluster")
    pool = ray.data.ActorPoolStrategy(size=p.actors) if p.most <= p.actors else ray.data.ActorPoolStrategy(min_size=p.actors, max_size=p.most)
    say(f"Ray: {sum(n.get('CPU', 0.0) for n in nodes):g} CPUs{f', {g:g} GPUs' if (g := sum(n.get('GPU', 0.0) for n in nodes)) else ''} "
        f"on {len(nodes)} node(s){'; the head takes no actors' if placed else ''}; {p.actors} translate actor(s)"
        f"{f' (up to {p.most} as the cluster scales)' if p.most > p.actors else ''} x "
        f"{p.cpus:.3g} CPU{f' + {p.gpus:g} GPU' if p.gpus else ''}, {p.threads} onnxruntime thread(s) each")
    t_data = time.time()
    progress = Progress(sum(u["stop"] - u["start"] for u in todo), "rows")
    rows = errors = committed = 0
    fence = lease.fence
    commit_job = {k: job[k] for k in ("fingerprint", "names", "text_column", "id_column")}
    try:
        with relayed(progress.console) as relay:
            # paths go to the workers absolute (or as URIs): the workers may run on other nodes
            ds = ray.data.from_items([_ray_row(u) for u in todo], override_num_blocks=len(todo))
            ds = ds.map_batches(read_texts_task, batch_size=None, batch_format="pyarrow", num_cpus=IO_TASK_CPUS,
                                fn_kwargs={"text_column": cfg.text_column, "prefix_column": cfg.target_prefix_column})
            # A dead actor is replaced and its unit retried: Ray Data's default for actor pools (tests/test_translate_faults.py).
            # one unit per call (a block holds one): the batch size Ray Data requires of actors that ask for GPUs
            ds = ds.map_batches(TranslateBatch, batch_size=1, batch_format="pyarrow", compute=pool,
                                num_cpus=p.cpus, num_gpus=p.gpus or None, resources=placed or None,
                                fn_constructor_kwargs={"model": absolute(cfg.model), "attempts": folder.attempts_template,
                                                       "decode": cfg.decode, "variant": cfg.variant, "device": p.device,
                                                       "threads": p.threads, "relay": relay,
                                                       "poison_limit": poison_limit(cfg, todo)})
            ds = ds.map_batches(commit_task, batch_size=None, batch_format="pyarrow", num_cpus=IO_TASK_CPUS,
                                fn_kwargs={"output": folder.output, "fence": fence, "job": commit_job})
            for row in ds.iter_rows():
                lease.raise_if_lost()
                stats = json.loads(row["stats"])
                committed, rows, errors = committed + 1, rows + stats["rows"], errors + stats["errors"]
                progress.update(rows, f"{errors:,} error(s), {committed}/{len(todo)} shards", final=committed == len(todo))
                yield {"name": row["name"], "stats": stats, "meta": json.loads(row["meta"])}
    finally:
        phases["translate_s"] = time.time() - t_data
        if started == "local cluster":  # now rather than at exit, where Ray's hook first sleeps 0.5 s for log lines
            ray.shutdown()
            phases["ray_stop_s"] = time.time() - t_data - phases["translate_s"]


def poison_limit(cfg: TranslateConfig, todo: list[dict]) -> int:
    """Rows of one unit that may each crash an actor before the run stops: as many as the error gate allows over
    the whole run, since a unit that needs more fails the gate anyway."""
    return max(1, int(cfg.max_error_rate * sum(u["stop"] - u["start"] for u in todo)))

