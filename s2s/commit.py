"""The translate job's output folder: a Parquet dataset other tools read as it is, every input row exactly once.

    OUT/part-<file key>-<first row>.parquet   one per unit of input rows: published whole, never replaced
    OUT/_job.json        the settings (fingerprint) and input the folder was started with; --resume checks it
    OUT/_run.json        the last run's summary and `status`
    OUT/_SUCCESS         only when every planned row is in a verified part and the error gate passed; it names
                         the fingerprint, the epoch, every input file with its pin, and every part
    OUT/_lease/          the live run's lease and epoch (s2s/lease.py)
    OUT/_staging/e<N>/   epoch N's writes in progress and its units' attempt records (local and POSIX only)
    OUT/_rejected/       parts that failed verification on a resume, kept for inspection

Names starting with `_` are skipped by pandas, pyarrow, Spark and Ray Data, so `pandas.read_parquet(OUT)`
reads the parts alone.

**Publishing a part** is a create that fails where the name exists, so no part is ever replaced: a local
file is written whole into the run's staging folder, fsynced, and hard-linked to its name (atomic, and
refused where the name exists); on S3 the part is one PutObject with `If-None-Match: *`.

**Fencing.** Every write, and every delete, first checks the run's lease (`Fence.check`). On a local or
POSIX file system the storage enforces it too: every change a run makes to the folder goes through its
own staging folder (a part is linked from there, a delete is a rename into it), and a run that takes the
lease renames every older epoch's staging folder away before it touches anything. A run that stalled past
its lease and wakes up finds its staging folder gone: its link, rename or write fails, whatever it
checked before. On S3, where no rename exists, a part's PutObject is followed by a second check, and a
run that finds it lost its lease deletes its part again (`If-Match` its own ETag, so never another's);
deletes carry `If-Match` of the ETag that was verified, so a stale run's delete cannot remove a part
written since. Before `_SUCCESS` the run lists the folder and requires exactly the parts it verified or
published, unchanged, and no other part.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from s2s.inputs import RESULT_TYPES, as_bytes, read_rows, texts_digest
from s2s.lease import LEASE_DIR, Fence, LeaseLost
from s2s.status import part_counts
from s2s.storage import InputChanged, PreconditionFailed, delete_object_if, fsync_dir, is_s3, open_pinned, put_object_if, s3_list, s3_parts, s3_read, with_key

JOB_FILE = "_job.json"
RUN_FILE = "_run.json"
SUCCESS_FILE = "_SUCCESS"
STAGING_DIR = "_staging"
REJECTED_DIR = "_rejected"
STATS_KEY = b"s2s_stats"  # a part's unit, fingerprint, epoch and counts, in its Parquet footer
KEEP = (LEASE_DIR, STAGING_DIR)  # what --overwrite never empties


class PartExists(FileExistsError):
    """A part's name is taken already."""


class LocalFolder:
    """An output folder on a local or POSIX file system."""

    s3 = False

    def __init__(self, output: str, fence: Fence):
        self.output, self.fence = output.rstrip("/"), fence
        self.root = Path(self.output)
        self.staging = self.root / STAGING_DIR / f"e{fence.epoch}"

    def begin(self) -> None:
        """Revoke every older epoch's staging folder (renamed away, then deleted), then make this epoch's own."""
        stage_root = self.root / STAGING_DIR
        stage_root.mkdir(parents=True, exist_ok=True)
        for entry in os.scandir(stage_root):
            if entry.name != self.staging.name:
                gone = stage_root / f".revoked-{entry.name}-{uuid.uuid4().hex[:8]}"
                try:
                    os.rename(entry.path, gone)  # atomic: a stale run's path-based writes fail from here on
                except FileNotFoundError:
                    continue
                shutil.rmtree(gone, ignore_errors=True)
        self.staging.mkdir()
        fsync_dir(stage_root)

    def listing(self) -> dict[str, dict]:
        """Top-level entries other than the lease and the staging folders: {name: {"size", "mtime_ns", "inode", "dir"}}."""
        found = {}
        for e in os.scandir(self.root) if self.root.is_dir() else []:
            if e.name in KEEP:
                continue
            st = e.stat(follow_symlinks=False)
            found[e.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino, "dir": e.is_dir(follow_symlinks=False)}
        return found

    def read(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None

    def open_part(self, name: str, meta: dict):
        return open(self.root / name, "rb")

    def publish(self, name: str, data: bytes, create_only: bool = True) -> dict:
        """Write `name` whole through this epoch's staging folder; create-only parts are linked, other files renamed."""
        self.fence.check()
        tmp = self.staging / f"{uuid.uuid4().hex}-{name}"
        try:
            f = open(tmp, "xb")
        except FileNotFoundError as e:
            raise self._revoked() from e
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            if create_only:
                try:
                    os.link(tmp, self.root / name)
                except FileExistsError as e:
                    raise PartExists(f"{self.root / name}: already exists") from e
                os.unlink(tmp)
            else:
                os.rename(tmp, self.root / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(self.root)
        st = (self.root / name).stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}

    def remove(self, name: str, meta: dict | None = None, to: str | None = None) -> None:
        """Delete `name` (or move it to `to` within the folder) by renaming it into this epoch's staging first."""
        self.fence.check()
        held = self.staging / f"{uuid.uuid4().hex}-{name}"
        try:
            os.rename(self.root / name, held)
        except FileNotFoundError as e:
            if not self.staging.is_dir():
                raise self._revoked() from e
            return  # gone already
        if to:
            (self.root / to).parent.mkdir(parents=True, exist_ok=True)
            os.rename(held, self.root / to)
        elif held.is_dir():
            shutil.rmtree(held)
        else:
            held.unlink()
        fsync_dir(self.root)

    @property
    def attempts_template(self) -> str:
        """Where the actors keep a unit's attempt record (`{name}`: the part's name): in this epoch's staging."""
        return _template(str(self.staging / "attempts-NAME.json"))

    def _revoked(self) -> LeaseLost:
        return LeaseLost(f"{self.output}: this run's staging folder {self.staging.name} was revoked by a run that took the lease "
                         "over; it commits nothing more")


class S3Folder:
    """An output folder under an s3:// prefix (boto3; endpoint and credentials the standard AWS way)."""

    s3 = True

    def __init__(self, output: str, fence: Fence):
        self.output, self.fence = output.rstrip("/"), fence
        self.prefix = s3_parts(self.output)[1].rstrip("/")

    def uri(self, name: str) -> str:
        return with_key(self.output, f"{self.prefix}/{name}")

    def begin(self) -> None:
        pass  # no staging on S3: parts are single conditional PutObjects

    def listing(self) -> dict[str, dict]:
        found = {}
        for key, meta in s3_list(self.output).items():
            top = key.split("/", 1)[0]
            if top in KEEP:
                continue
            if "/" in key:
                found.setdefault(top, {"dir": True, "size": 0})
            else:
                found[key] = {**meta, "dir": False}
        return found

    def read(self, name: str) -> bytes | None:
        got = s3_read(self.uri(name))
        return got[0] if got else None

    def open_part(self, name: str, meta: dict):
        return open_pinned(self.uri(name), {"size": meta["size"], "etag": meta["etag"]})

    def publish(self, name: str, data: bytes, create_only: bool = True) -> dict:
        """A part is one PutObject with If-None-Match: *; the lease is checked before and after, and a run that
        lost it meanwhile deletes what it just put (If-Match its own ETag)."""
        self.fence.check()
        try:
            etag = put_object_if(self.uri(name), data, if_none_match=create_only)
        except PreconditionFailed as e:
            raise PartExists(f"{self.uri(name)}: already exists") from e
        try:
            self.fence.check()
        except Exception:
            delete_object_if(self.uri(name), etag)
            raise
        return {"size": len(data), "etag": etag}

    def remove(self, name: str, meta: dict | None = None, to: str | None = None) -> None:
        """Delete (or move) `name`; only the version that was seen (`meta["etag"]`), so never a part written since."""
        self.fence.check()
        if meta and meta.get("dir"):
            for key, m in s3_list(self.uri(name)).items():
                delete_object_if(self.uri(f"{name}/{key}"), m["etag"])
            return
        if to:
            got = s3_read(self.uri(name), (meta or {}).get("etag"))
            if got:
                put_object_if(self.uri(to), got[0])
        delete_object_if(self.uri(name), (meta or {}).get("etag"))

    @property
    def attempts_template(self) -> str:
        return _template(self.uri(f"{STAGING_DIR}/e{self.fence.epoch}/attempts-NAME.json"))


def _template(path: str) -> str:
    return path.replace("{", "{{").replace("}", "}}").replace("attempts-NAME.json", "attempts-{name}.json")


def open_folder(output: str, fence: Fence) -> LocalFolder | S3Folder:
    return S3Folder(output, fence) if is_s3(output) else LocalFolder(output, fence)


# ---------------------------------------------------------------- parts: write, read back, verify


def part_bytes(rows: pa.Table, stats: dict) -> bytes:
    """A part as Parquet bytes, its stats in the footer."""
    rows = rows.replace_schema_metadata({**(rows.schema.metadata or {}), STATS_KEY: json.dumps(stats).encode()})
    buf = io.BytesIO()
    pq.write_table(rows, buf, compression="zstd")
    return buf.getvalue()


def read_footer(folder: LocalFolder | S3Folder, name: str, meta: dict) -> tuple[dict | None, int]:
    """A part's stats (None where its footer has none) and row count."""
    with folder.open_part(name, meta) as f:
        pf = pq.ParquetFile(f)
        return json.loads((pf.schema_arrow.metadata or {}).get(STATS_KEY, b"null")), pf.metadata.num_rows


def publish_part(folder: LocalFolder | S3Folder, name: str, data: bytes, stats: dict) -> dict:
    """Publish a part; where its name is taken by this very part (a commit Ray retried after it landed), that
    part is the commit. Return the part's listing entry."""
    try:
        return folder.publish(name, data, create_only=True)
    except PartExists:
        meta = folder.listing().get(name)
        footer, _ = read_footer(folder, name, meta) if meta else (None, 0)
        if footer == stats:
            return meta
        raise


def commit_unit(folder: LocalFolder | S3Folder, unit: dict, results: dict[str, list], job: dict) -> dict:
    """Join a unit's results to its input rows and publish them as its part, whole or not at all.

    The rows are read from the input again, from the version pinned at planning (the pass-through columns,
    however wide, never travel through Ray Data), and must hold the very texts that were translated (their
    digest) and the planned row count. The footer records the unit with its pin, the settings' fingerprint,
    the epoch and the part's counts, which `--resume` verifies and _run.json sums.
    """
    planned, names = unit["stop"] - unit["start"], job["names"]
    rows = read_rows(unit)
    if texts_digest(as_bytes(rows.column(job["text_column"]))) != unit["digest"]:
        raise InputChanged(f"{unit['path']}: rows {unit['start']}..{unit['stop']} now hold other texts than the ones translated: "
                           "the file was rewritten in place. Nothing of it is committed from here on; rerun with --resume.")
    rows, repaired = valid_utf8(rows)
    if "row_id" in names:
        rows = rows.append_column("row_id", pa.array([f"{unit['label']}#{i}" for i in range(unit["start"], unit["stop"])]))
    if {rows.num_rows, *(len(results[k]) for k in names if k != "row_id")} != {planned}:
        raise RuntimeError(f"{unit['name']}: {rows.num_rows} input rows and {len(results['error'])} results for the "
                           f"{planned} rows planned from {unit['path']} rows {unit['start']}..{unit['stop']}; not committed")
    for key, column in names.items():
        if key != "row_id":
            rows = rows.append_column(column, pa.array(results[key], RESULT_TYPES[key]))
    stats = {"unit": unit_key(unit), "fingerprint": job["fingerprint"], "epoch": folder.fence.epoch, "provider": unit["provider"],
             "variant": unit["variant"], "node": unit["node"], "gpus": unit.get("gpus", ""), **part_counts(rows, job["text_column"], names),
             "repaired_utf8_cells": repaired}
    meta = publish_part(folder, unit["name"], part_bytes(rows, stats), stats)
    return {"name": unit["name"], "stats": stats, "meta": meta}


def valid_utf8(rows: pa.Table) -> tuple[pa.Table, int]:
    """The rows with every string cell made valid UTF-8 (U+FFFD for bad bytes), and how many cells that changed.

    A string column holding bytes that are not UTF-8 is not valid Parquet: pandas and pyarrow's converters
    fail on the whole file. Such a text row already carries an `error`; its text is kept, repaired, so that
    the output reads anywhere, and the input still has the original bytes at its row id.
    """
    repaired = 0
    for i, name in enumerate(rows.column_names):
        col = rows.column(i)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            continue
        try:
            col.validate(full=True)
        except pa.ArrowInvalid:
            raw = as_bytes(col).to_pylist()
            fixed = [None if b is None else b.decode("utf-8", "replace") for b in raw]
            repaired += sum(b is not None and f.encode() != b for b, f in zip(raw, fixed))
            rows = rows.set_column(i, name, pa.array(fixed, col.type))
    return rows, repaired


def unit_key(unit: dict) -> dict:
    return {k: unit[k] for k in ("path", "label", "start", "stop", "pin")}


def check_part(stats: dict | None, n: int, unit: dict | None, fingerprint: str, moved: dict[str, str]) -> str | None:
    """Why a part cannot count for this run (None: it counts)."""
    if not stats:
        return "has no s2s-job footer (not written by this job, or by an older version)"
    if stats.get("fingerprint") != fingerprint:
        return "was written with other settings"
    if unit is None:
        path = stats.get("unit", {}).get("path")
        return moved.get(path, "is not a unit of this run")
    if stats.get("unit") != unit_key(unit):
        if stats.get("unit", {}).get("pin") != unit["pin"]:
            return f"was translated from another version of {unit['path']}, which changed since"
        return "holds another unit's rows"
    if not n == stats.get("rows") == unit["stop"] - unit["start"]:
        return f"has {n} rows where {unit['stop'] - unit['start']} were planned"
    return None


def verify_parts(folder: LocalFolder | S3Folder, units: list[dict], fingerprint: str, files: list[dict]) -> tuple[dict, list[str]]:
    """The parts already there that count for this run ({name: {"stats", "meta"}}), and what was rejected.

    A part counts only if its footer names one of this plan's units, with the input file's pin, the
    settings' fingerprint and the planned row count. Others (short, unreadable, another unit's, other
    settings', from a version of an input file that changed since, or of a file no longer in the input)
    are moved to `_rejected/`, said, and redone where their unit is still planned.
    """
    planned = {u["name"]: u for u in units}
    paths = {f["path"] for f in files}
    done, said = {}, []
    for name, meta in sorted(folder.listing().items()):
        if meta["dir"] or not name.startswith("part-"):
            continue
        try:
            stats, n = read_footer(folder, name, meta)
        except (pa.ArrowInvalid, OSError, ValueError) as e:
            why = f"is unreadable ({e})"
        else:
            gone = {} if not stats else {stats.get("unit", {}).get("path"): f"was translated from {stats.get('unit', {}).get('path')}, "
                                                                      "which is no longer among the inputs"}
            why = check_part(stats, n, planned.get(name), fingerprint, {p: w for p, w in gone.items() if p not in paths})
        if why:
            folder.remove(name, meta, to=f"{REJECTED_DIR}/{name}.e{folder.fence.epoch}")
            said.append(f"{name}: {why}; moved to {REJECTED_DIR}/ and redone where still planned")
        else:
            done[name] = {"stats": stats, "meta": meta}
    return done, said


def final_check(folder: LocalFolder | S3Folder, expected: dict[str, dict]) -> str | None:
    """Before _SUCCESS: the folder must hold exactly the parts this run verified or published, as they were
    then, and no other part. Why not, or None."""
    now = {n: m for n, m in folder.listing().items() if n.startswith("part-") and not m["dir"]}
    extra, missing = sorted(set(now) - set(expected)), sorted(set(expected) - set(now))
    changed = sorted(n for n in set(now) & set(expected) if _version(now[n]) != _version(expected[n]))
    if not (extra or missing or changed):
        return None
    return "; ".join(f"{what}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                     for what, names in (("parts this run did not write or verify", extra), ("parts gone", missing),
                                         ("parts replaced", changed)) if names)


def _version(meta: dict) -> tuple:
    return (meta.get("size"), meta.get("etag"), meta.get("inode"), meta.get("mtime_ns") if "etag" not in meta else None)


def write_marker(folder: LocalFolder | S3Folder, name: str, value: dict, create_only: bool = False) -> dict:
    return folder.publish(name, json.dumps(value, indent=2).encode(), create_only=create_only)


def read_marker(folder: LocalFolder | S3Folder, name: str) -> dict | None:
    data = folder.read(name)
    return json.loads(data) if data else None


def remove_success(folder: LocalFolder | S3Folder) -> None:
    meta = folder.listing().get(SUCCESS_FILE)
    if meta:
        folder.remove(SUCCESS_FILE, meta)


def write_success(folder: LocalFolder | S3Folder, value: dict) -> None:
    """_SUCCESS, created only where none is there; one left by a run that lost its lease is replaced."""
    try:
        write_marker(folder, SUCCESS_FILE, value, create_only=True)
    except PartExists:
        remove_success(folder)
        write_marker(folder, SUCCESS_FILE, value, create_only=True)


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
