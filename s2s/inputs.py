"""What a translate run reads: one listing of the input, each file pinned to the version it was planned from.

    list_inputs(spec)     a file, a folder (recursive) or a glob -> the Parquet files, and what was skipped
    plan(...)             each file's footer checked (columns, types, names the results would take, ids),
                          its identity pinned, and its rows cut into units of `rows_per_shard`
    read_rows(unit)       a unit's rows from exactly the pinned version, or InputChanged

One listing serves every form of input. Below the folder (or the glob's fixed prefix), a name starting
with `_` or `.` is skipped at every level, as Spark, Hive and Delta writers expect (`_temporary/`,
`_SUCCESS`, `_delta_log/`, `.crc` files); a glob's wildcards match within one path segment, `**` across
them. A file is taken by its Parquet footer, whatever its suffix (Hive writes `000000_0`); a file named
`.parquet` whose footer is not Parquet is an error, any other non-Parquet file is skipped. What was skipped
is said in one line.

A file's pin (s2s.storage.file_identity) is taken when its footer is read and checked at every later
read: the texts the actors translate and the rows the commit writes come from the same version of the
file, or the run stops with exit 3 naming it, before anything read after the change is committed.
"""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from s2s.storage import InputChanged, check_pinned, file_identity, filesystem, is_uri, open_pinned

PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
RESULT_TYPES = {"translation": pa.string(), "score": pa.float64(), "src_tokens": pa.int32(), "tgt_tokens": pa.int32(),
                "error": pa.string(), "nbest": pa.list_(pa.struct([("translation", pa.string()), ("score", pa.float64())])),
                "token_scores": pa.list_(pa.float32()), "alignment": pa.list_(pa.int32()),
                "flags": pa.list_(pa.string()), "first_flags": pa.list_(pa.string()),
                "terms_required": pa.list_(pa.string()), "terms_met": pa.list_(pa.string())}
OPTIONAL_RESULTS = ("nbest", "token_scores", "alignment", "flags", "first_flags", "terms_required", "terms_met")  # written only when asked for
TEXT_TYPES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary)


class JobError(ValueError):
    """A run that cannot start: the message names the input, column or folder and what to do (exit 2)."""


def part_name(path: str, start: int) -> str:
    """The output part of the unit of `path` that starts at row `start`."""
    return f"part-{hashlib.sha1(path.encode()).hexdigest()[:12]}-{start:010d}.parquet"


def result_names(prefix: str, nbest: bool, id_column: str | None, token_scores: bool = False, alignment: bool = False,
                 flags: bool = False, terms: bool = False) -> dict[str, str]:
    """{result: the column it is written to}: the results under `prefix`, and `row_id` where no id column is given."""
    asked = {"nbest": nbest, "token_scores": token_scores, "alignment": alignment, "flags": flags, "first_flags": flags,
             "terms_required": terms, "terms_met": terms}
    names = {k: prefix + k for k in RESULT_TYPES if k not in OPTIONAL_RESULTS or asked[k]}
    if not id_column:
        names["row_id"] = "row_id"
    return names


# ---------------------------------------------------------------- listing


def _hidden(name: str) -> bool:
    return name.startswith(("_", "."))


def _match(pattern: list[str], parts: list[str]) -> bool:
    """Glob segments against path segments: `*`, `?` and `[...]` within a segment, `**` across any number of
    them; a segment starting with `_` or `.` is matched only by a pattern segment that starts so too."""
    if not pattern:
        return not parts
    head = pattern[0]
    if head == "**":
        return any(_match(pattern[1:], parts[k:]) for k in range(len(parts) + 1) if not any(_hidden(p) for p in parts[:k]))
    if not parts or (_hidden(parts[0]) and not _hidden(head)):
        return False
    return fnmatch.fnmatchcase(parts[0], head) and _match(pattern[1:], parts[1:])


def _looks_parquet(fs: pafs.FileSystem, info: pafs.FileInfo) -> bool:
    """Whether a file has Parquet's magic at both ends."""
    if info.size < 12:
        return False
    with fs.open_input_file(info.path) as f:
        head = f.read(4)
        f.seek(info.size - 4)
        return head == b"PAR1" and f.read(4) == b"PAR1"


def list_inputs(spec: str) -> tuple[list[dict], str]:
    """The Parquet files of an input spec, sorted, each with its URI (`path`) and its `label` (the path within
    the folder or the glob's fixed prefix, which makes default row ids unique); and a line saying what was
    skipped ("" where nothing was)."""
    fs, path = filesystem(spec)
    wild = [i for i, seg in enumerate(path.split("/")) if any(ch in seg for ch in "*?[")]
    if wild:
        segs = path.split("/")
        root = "/".join(segs[: wild[0]]) or "/"
        pattern = segs[wild[0]:]
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        rel = lambda i: i.path[len(root.rstrip("/")) + 1:]  # noqa: E731
        candidates = [i for i in infos if i.type == pafs.FileType.File]
        hidden = [i for i in candidates if not _match(pattern, rel(i).split("/")) and _match_ignoring_hidden(pattern, rel(i).split("/"))]
        found = [i for i in candidates if _match(pattern, rel(i).split("/"))]
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise JobError(f"{spec}: no such input. Pass a Parquet file, a folder of shards or a glob.")
        if info.type == pafs.FileType.File:
            root, found, hidden = path.rsplit("/", 1)[0], [info], []
        else:
            root = path.rstrip("/")
            rel = lambda i: i.path[len(root) + 1:]  # noqa: E731
            candidates = [i for i in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if i.type == pafs.FileType.File]
            hidden = [i for i in candidates if any(_hidden(p) for p in rel(i).split("/"))]
            found = [i for i in candidates if not any(_hidden(p) for p in rel(i).split("/"))]
    parquet, other = [], []
    for i in found:
        if i.path.lower().endswith(PARQUET_SUFFIXES) or _looks_parquet(fs, i):
            parquet.append(i)
        else:
            other.append(i)
    if not parquet:
        raise JobError(f"{spec}: no Parquet files found there{f' ({_skipped(root, hidden, other)})' if hidden or other else ''}.")
    # a URI keeps its scheme and query (?endpoint_override=...): the tasks that read it open it by that URI
    scheme, query = (spec.split("://", 1)[0] + "://", spec.partition("?")[2]) if is_uri(spec) else ("", "")
    files = [{"path": scheme + i.path + (f"?{query}" if query else ""), "label": i.path[len(root.rstrip("/")) + 1:]}
             for i in sorted(parquet, key=lambda i: i.path)]
    return files, _skipped(root, hidden, other) if hidden or other else ""


def _match_ignoring_hidden(pattern: list[str], parts: list[str]) -> bool:
    """Whether the pattern would match these segments if `_` and `.` names were not skipped."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_match_ignoring_hidden(pattern[1:], parts[k:]) for k in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _match_ignoring_hidden(pattern[1:], parts[1:])


def _skipped(root: str, hidden: list, other: list) -> str:
    def names(infos: list) -> str:
        shown = [i.path[len(root.rstrip("/")) + 1:] for i in infos[:3]]
        return ", ".join(shown) + (f" and {len(infos) - 3} more" if len(infos) > 3 else "")

    parts = []
    if hidden:
        parts.append(f"{len(hidden)} under names starting with _ or . (writers' metadata and temporary files: {names(hidden)})")
    if other:
        parts.append(f"{len(other)} not Parquet ({names(other)})")
    return "skipped " + "; ".join(parts)


# ---------------------------------------------------------------- planning


@dataclass(frozen=True)
class Plan:
    files: list[dict]  # {"path", "label", "pin", "rows"}
    units: list[dict]  # {"path", "label", "pin", "start", "stop", "name"}
    skipped: str  # what the listing left out, in one line ("" where nothing)
    text_column: str = "text"  # the column translated: the one asked for, or the one found (see `plan`)


TEXT_COLUMNS = ("text", "src")  # what --text-column looks for when it is not given, in this order


def plan(spec: str, text_column: str | None, rows_per_shard: int, results: dict[str, str], id_column: str | None = None,
         reference_column: str | None = None, allow_duplicate_ids: bool = False, prefix_column: str | None = None) -> Plan:
    """List the input, pin each file, check its footer, cut it into units; JobError where the input cannot run.
    Without a `text_column`, the first of TEXT_COLUMNS that the first file has is used."""
    listed, skipped = list_inputs(spec)
    files, units = [], []
    for f in listed:
        pin = file_identity(f["path"])
        try:
            with open_pinned(f["path"], pin) as handle:
                pf = pq.ParquetFile(handle)
                schema, n_rows = pf.schema_arrow, pf.metadata.num_rows
                check_pinned(handle)
        except InputChanged:
            raise
        except (pa.ArrowInvalid, OSError) as e:
            raise JobError(f"{f['path']}: not a readable Parquet file ({e}). Fix or remove it, then run again.") from e
        if text_column is None:
            text_column = next((c for c in TEXT_COLUMNS if c in schema.names), None)
            if text_column is None:
                raise JobError(f"{f['path']}: no --text-column given, and none of the columns {', '.join(TEXT_COLUMNS)} is there "
                               f"(columns: {', '.join(schema.names[:20])}). Name the text column with --text-column.")
        _check_schema(f["path"], schema, text_column, id_column, reference_column, results, prefix_column)
        files.append({**f, "pin": pin, "rows": n_rows})
        for start in range(0, n_rows, rows_per_shard):
            units.append({"path": f["path"], "label": f["label"], "pin": pin, "start": start, "stop": min(n_rows, start + rows_per_shard),
                          "name": part_name(f["path"], start)})
    if id_column and not allow_duplicate_ids:
        _check_ids(files, id_column)
    return Plan(files, units, skipped, text_column or TEXT_COLUMNS[0])


def _check_schema(path: str, schema: pa.Schema, text_column: str, id_column: str | None, reference_column: str | None,
                  results: dict[str, str], prefix_column: str | None = None) -> None:
    names = schema.names
    for col, flag in ((text_column, "--text-column"), (id_column, "--id-column"), (reference_column, "--reference-column"),
                      (prefix_column, "--target-prefix-column")):
        if col and col not in names:
            raise JobError(f"{path}: no column {col!r}; it has {names}. Name the right one with {flag}.")
    kind = schema.field(text_column).type
    value_type = kind.value_type if pa.types.is_dictionary(kind) else kind
    if not any(is_text(value_type) for is_text in TEXT_TYPES):
        raise JobError(f"{path}: column {text_column!r} holds {kind}, not text (string or binary). Name the text column with --text-column.")
    clash = sorted(set(names) & set(results.values()))
    if clash:
        hint = ("pass --id-column row_id to use it as the row id, or " if clash == ["row_id"] else "")
        raise JobError(f"{path}: has column(s) {clash}, which the results would be written to as well; {hint}pass "
                       "--result-prefix (e.g. --result-prefix mt_) to write the results under other names.")


def _check_ids(files: list[dict], id_column: str) -> None:
    """Refuse an id column with nulls or duplicates, naming the first few: a downstream MERGE on it would drop rows."""
    columns, where = [], []
    for f in files:
        col = read_column(f, id_column)
        columns.append(col)
        where.append(f["label"])
    ids = pa.chunked_array(columns).combine_chunks() if columns else pa.array([])
    nulls = pc.indices_nonzero(pc.is_null(ids)).to_pylist()
    counts = pc.value_counts(ids.drop_null())
    dup = counts.filter(pc.greater(counts.field("counts"), 1))
    if not nulls and not len(dup):
        return

    def place(i: int) -> str:
        for col, label in zip(columns, where):
            if i < len(col):
                return f"{label}#{i}"
            i -= len(col)
        return "?"

    said = []
    if nulls:
        said.append(f"{len(nulls)} null id(s), at {', '.join(place(i) for i in nulls[:3])}")
    if len(dup):
        shown = [f"{v!r} x{c}" for v, c in zip(dup.field("values").to_pylist()[:3], dup.field("counts").to_pylist()[:3])]
        said.append(f"{len(dup)} id value(s) on more than one row: {', '.join(shown)}")
    raise JobError(f"--id-column {id_column!r} is not a unique key: {'; '.join(said)}. A MERGE on it downstream would drop or "
                   "duplicate rows. Fix the input, choose another --id-column, or pass --allow-duplicate-ids to accept it.")


def read_column(f: dict, column: str) -> pa.Array:
    with open_pinned(f["path"], f["pin"]) as handle:
        col = pq.ParquetFile(handle).read(columns=[column]).column(0).combine_chunks()
        check_pinned(handle)
    return col


# ---------------------------------------------------------------- reading a unit


_LAST_ROW_GROUP: dict[tuple, pa.Table] = {}  # the row group this worker process decoded last


def read_rows(unit: dict, columns: list[str] | None = None) -> pa.Table:
    """The unit's rows (or some of their columns), read from exactly its pinned version of the file.

    A row group is decoded once per process and reused: Parquet cannot read rows k..k+n without decoding
    the group from its start, and writers make groups of up to a million rows, so without this a file with
    one big group would be decoded once per unit (quadratic; measured: a read task ate half a core on a
    100k-row file).
    """
    try:
        with open_pinned(unit["path"], unit["pin"]) as handle:
            pf = pq.ParquetFile(handle)
            parts, offset = [], 0
            for rg in range(pf.num_row_groups):
                n = pf.metadata.row_group(rg).num_rows
                if offset + n > unit["start"] and offset < unit["stop"]:
                    key = (unit["path"], tuple(sorted(unit["pin"].items())), tuple(columns or ()), rg)
                    if key not in _LAST_ROW_GROUP:
                        _LAST_ROW_GROUP.clear()
                        _LAST_ROW_GROUP[key] = pf.read_row_group(rg, columns=columns)
                    t = _LAST_ROW_GROUP[key]
                    parts.append(t.slice(max(0, unit["start"] - offset), unit["stop"] - max(offset, unit["start"])))
                offset += n
            empty = pf.schema_arrow.empty_table() if columns is None else pf.schema_arrow.empty_table().select(columns)
            check_pinned(handle)
    except InputChanged as e:
        _LAST_ROW_GROUP.clear()
        raise InputChanged(f"{e} Nothing read from it since is committed. Rerun with --resume: the parts of this file are "
                           "redone from its new version.") from e
    except (pa.ArrowException, OSError) as e:
        raise OSError(f"{unit['path']}: rows {unit['start']}..{unit['stop']} cannot be read ({type(e).__name__}: {e}). Fix or "
                      "replace the file, or take it out of the input, and rerun with --resume.") from e
    return pa.concat_tables(parts) if parts else empty


def as_bytes(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A text column as binary: a row whose bytes are not UTF-8 then fails alone, in the translator, instead of
    failing the whole read (pyarrow raises on converting such a string); dictionary columns are decoded."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if pa.types.is_string(col.type):
        return col.view(pa.binary())
    if pa.types.is_large_string(col.type):
        return col.view(pa.large_binary())
    return col


def texts_digest(texts: pa.Array) -> str:
    """A digest of a unit's texts (as bytes): the commit checks that the rows it writes hold the texts translated."""
    h = hashlib.blake2b(digest_size=16)
    for v in texts.to_pylist():
        h.update(b"\0" if v is None else b"\1" + len(v).to_bytes(8, "little") + v)
    return h.hexdigest()


def read_texts(batch: pa.Table, text_column: str, prefix_column: str | None = None) -> pa.Table:
    """Ray Data map: each unit's texts as one list cell, and their digest (and, with `prefix_column`, each row's
    target prefix). One row per unit, so no block boundary can split a unit."""
    cells, digests, prefixes = [], [], []
    for unit in batch.select(["path", "pin", "start", "stop"]).to_pylist():
        rows = read_rows(unit, [text_column] + ([prefix_column] if prefix_column else []))
        col = as_bytes(rows.column(0))
        cells.append(col.to_pylist())
        digests.append(texts_digest(col))
        if prefix_column:
            prefixes.append([p if isinstance(p, str) else None for p in rows.column(1).to_pylist()])
    out = batch.append_column("texts", pa.array(cells, pa.list_(pa.binary()))).append_column("digest", pa.array(digests))
    return out.append_column("prefixes", pa.array(prefixes, pa.list_(pa.string()))) if prefix_column else out
