"""A training run's folder, on a local disk or on object storage (s3://, gs://), and its checkpoints.

    RUN/config.json          the run's settings and a `run_id`; written last by `prepare`, so a run with it is whole
    RUN/src.model tgt.model  SentencePiece models
    RUN/data/*.parquet       tokenized train and valid pairs, valid and test sources with their references
    RUN/metrics.jsonl        progress and validation lines; curves.png and eval.json beside it
    RUN/train/               Ray Train's storage (RunConfig(storage_path=RUN, name="train")): one
                             checkpoint_<step>_<kind>/checkpoint.pt per report and Ray's snapshot of them

Everything that reads a run (the training workers, `evaluate`, `export`) works on a *working copy*: the run
itself where it is local, else a copy on this machine under $S2S_RUN_CACHE (by default
~/.cache/s2s-job/runs), keyed by the run's URI and config.json, so that each node fetches the prepared data
once. Checkpoints are Ray Train's own (`ray.train.Checkpoint`, kept by `CheckpointConfig`); `checkpoint_file`
finds the best or the last one through `ray.train.Result.from_path`, as any Ray Train user would.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pyarrow.fs as pafs

from s2s.storage import build_folder_once, filesystem, is_uri, read_json, write_durably

CONFIG_FILE = "config.json"
EXPERIMENT = "train"  # RunConfig.name: Ray Train's folder inside the run
CHECKPOINT_FILE = "checkpoint.pt"
PREPARED = ("src.model", "tgt.model", "data/train.parquet", "data/valid.parquet", "data/test.parquet", "data/valid_pairs.parquet")
LOGS = ("metrics.jsonl", "curves.png", "eval.json")  # rewritten as the run goes: fetched again on every working_copy


def run_config(run: str | Path) -> dict | None:
    """The run's config.json, or None where `run` holds no (finished) prepared run."""
    fs, base = filesystem(str(run).rstrip("/"))
    try:
        return read_json(fs, f"{base}/{CONFIG_FILE}")
    except OSError as e:
        raise FileNotFoundError(f"{run}/{CONFIG_FILE}: cannot be read ({e}).") from e


def _cache_root() -> Path:
    return Path(os.environ.get("S2S_RUN_CACHE") or Path.home() / ".cache" / "s2s-job" / "runs")


def _copy(src_fs: pafs.FileSystem, src: str, dst_fs: pafs.FileSystem, dst: str) -> None:
    """Copy one file whole: a reader of `dst` never sees half of it."""
    if isinstance(dst_fs, pafs.LocalFileSystem):
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
    with src_fs.open_input_stream(src) as f:
        write_durably(dst_fs, dst, lambda sink: sink.write(f.read()))


def publish(local: Path, run: str, names: tuple[str, ...] | list[str]) -> None:
    """Upload these files of a working copy to a remote run (the ones that exist); a local run is its own copy."""
    if not is_uri(run):
        return
    fs, base = filesystem(run.rstrip("/"))
    for name in names:
        if (local / name).is_file():
            _copy(pafs.LocalFileSystem(), str(local / name), fs, f"{base}/{name}")


def working_copy(run: str | Path) -> Path:
    """A local folder holding the run's prepared files and its latest logs (see the module docstring)."""
    if not is_uri(run):
        path = Path(run)
        if not (path / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{path}: not a training run directory (no {CONFIG_FILE}). Pass the run directory given to train.")
        return path
    run = str(run).rstrip("/")
    fs, base = filesystem(run)
    try:
        with fs.open_input_stream(f"{base}/{CONFIG_FILE}") as f:
            config = f.read()
    except (FileNotFoundError, OSError) as e:
        raise FileNotFoundError(f"{run}/{CONFIG_FILE}: cannot be read ({e}); {run} is not a training run. "
                                "Pass the run directory given to train.") from e
    target = _cache_root() / hashlib.sha256(run.encode() + b"\0" + config).hexdigest()[:24]

    def fetch(folder: Path) -> None:
        for name in PREPARED:
            _copy(fs, f"{base}/{name}", pafs.LocalFileSystem(), str(folder / name))
        (folder / CONFIG_FILE).write_bytes(config)

    build_folder_once(target, fetch)
    for name in LOGS:
        if fs.get_file_info(f"{base}/{name}").type == pafs.FileType.File:
            _copy(fs, f"{base}/{name}", pafs.LocalFileSystem(), str(target / name))
    return target


def checkpoint_file(run: str | Path, which: str = "best", local: Path | None = None) -> Path:
    """A local path to checkpoint.pt of the run's best (highest `score`: valid BLEU) or last checkpoint.

    A remote checkpoint is downloaded once, into the run's working copy (`local`, when the caller has it)."""
    from ray.train import Result

    if which not in ("best", "last"):
        raise ValueError(f"which must be best or last, got {which!r}")
    fs, base = filesystem(str(run).rstrip("/"))
    # Reading the run, Ray Train logs at INFO that it "will load" the snapshot into a training function:
    # true when a trainer restores, misleading here
    quiet = logging.getLogger("ray.train")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        result = Result.from_path(f"{base}/{EXPERIMENT}", storage_filesystem=fs)
    except RuntimeError as e:
        raise FileNotFoundError(f"{run}: no checkpoints yet ({e}). Train first, or resume the run.") from e
    finally:
        quiet.setLevel(level)
    if which == "last":
        chosen = result.checkpoint
    else:  # ties (no validation yet) go to the later checkpoint
        chosen = max(result.best_checkpoints or [], key=lambda cm: (cm[1].get("score", -1.0), cm[1].get("step", 0)), default=(None,))[0]
    if chosen is None:
        raise FileNotFoundError(f"{run}: Ray Train recorded no checkpoint. Train first, or resume the run.")
    if not is_uri(run):
        return Path(chosen.path) / CHECKPOINT_FILE
    target = (local or working_copy(run)) / "checkpoints" / Path(chosen.path).name
    return build_folder_once(target, lambda folder: chosen.to_directory(str(folder))) / CHECKPOINT_FILE
