"""The translate job's output folder: a Parquet dataset other tools read as it is, written exactly once.

    OUT/part-<file key>-<first row>.parquet   one per unit of input rows, committed whole
    OUT/_job.json                             what the run was started with (its fingerprint): --resume checks it
    OUT/_run.json                             the run's summary and its `status`
    OUT/_SUCCESS                              present only when every planned row is in a verified part
    OUT/_lease.json                           the live run that owns the folder, and until when
    OUT/_attempts/<part name>.json            how often a unit was started without finishing (see translate.py)

Metadata sits under names starting with `_`, which pandas, pyarrow.dataset, Spark and Ray Data skip, so
`pandas.read_parquet(OUT)` reads the parts alone (Spark's `_SUCCESS` convention). A part is written to a
`_tmp-` name, flushed and fsynced where the filesystem can, then renamed: a reader never sees half a part.
Its footer says which unit it holds and with which settings, so a resumed run checks every part instead
of trusting its name.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pyarrow.fs as pafs

JOB_FILE = "_job.json"
RUN_FILE = "_run.json"
SUCCESS_FILE = "_SUCCESS"
LEASE_FILE = "_lease.json"
ATTEMPTS_DIR = "_attempts"
TMP_PREFIX = "_tmp-"
STATS_KEY = b"s2s_stats"  # a committed part's unit, fingerprint and counts, in its Parquet footer


class LeaseHeld(RuntimeError):
    """Another live run owns the output folder."""


def is_uri(path: str | Path) -> bool:
    """A URI (s3://, gs://) rather than a local path."""
    return "://" in str(path)


def absolute(path: str | Path) -> str:
    """A URI as it is, a local path made absolute: how a run or model is named in what we record."""
    return str(path) if is_uri(path) else str(Path(path).resolve())


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for a local path or a URI (s3://, gs://), and the path within it."""
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), str(Path(path).resolve())


def build_folder_once(target: Path, fill: Callable[[Path], None]) -> Path:
    """`target`, filled by `fill(folder)` under a temporary name and renamed, unless it is there already.

    Processes on one machine that build the same folder at once (the actors or training workers of a
    node fetching a model or a run) never see half of it: the first rename wins, the others' copies go.
    """
    if target.exists():
        return target
    tmp = target.parent / f".{target.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    fill(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_durably(fs: pafs.FileSystem, path: str, write: Callable[[Any], None]) -> None:
    """Write a file whole or not at all: `write(sink)` fills a `_tmp-` file that is then renamed to `path`.

    On a local disk the data is flushed and fsynced before the rename and the folder after it, so a
    committed part survives a power cut. An object store publishes an object only once its upload is
    complete; the temporary name keeps a failed upload out of the dataset there too.
    """
    folder, name = path.rsplit("/", 1)
    tmp = f"{folder}/{TMP_PREFIX}{uuid.uuid4().hex}-{name}.tmp"
    if isinstance(fs, pafs.LocalFileSystem):
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    else:
        with fs.open_output_stream(tmp) as sink:
            write(sink)
        fs.move(tmp, path)


def write_json(fs: pafs.FileSystem, path: str, value: dict) -> None:
    write_durably(fs, path, lambda f: f.write(json.dumps(value, indent=2).encode()))


def read_json(fs: pafs.FileSystem, path: str) -> dict | None:
    """The JSON object at `path`, or None where there is no such file."""
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


def delete_if_present(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


def _create_exclusive(fs: pafs.FileSystem, path: str, value: dict) -> bool:
    """Create `path` holding `value` only if it does not exist; True if this call created it.

    A local disk (or a shared POSIX file system) has an atomic create (O_EXCL). pyarrow's object-store
    filesystems have no conditional put, so there it is check, write, then read back: two runs that start
    within the same second can both pass the check, and the read-back lets all but the last writer see it.
    """
    data = json.dumps(value, indent=2).encode()
    if isinstance(fs, pafs.LocalFileSystem):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True
    if fs.get_file_info(path).type == pafs.FileType.File:
        return False
    write_json(fs, path, value)
    return (read_json(fs, path) or {}).get("owner") == value["owner"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    """A lock on an output folder with an owner and an expiry, renewed by a thread while the run lives.

    A second run on the same folder is refused with the owner's name. A run killed while holding the lease
    stops renewing it: the next run takes it over once it has expired, or at once where the owner was a
    process on this same host that no longer exists.
    """

    SECONDS = 120.0  # how long a lease lasts without renewal
    RENEW_EVERY = 20.0

    def __init__(self, output: str):
        self.output = output
        self.fs, out = filesystem(output)
        self.path = f"{out}/{LEASE_FILE}"
        self.owner = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict:
        return {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                "expires": time.time() + self.SECONDS, "expires_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + self.SECONDS))}

    def _stale(self, held: dict) -> bool:
        if held.get("expires", 0) < time.time():
            return True
        return held.get("host") == socket.gethostname() and not _pid_alive(int(held.get("pid", -1)))

    def acquire(self) -> None:
        self.fs.create_dir(self.path.rsplit("/", 1)[0], recursive=True)
        for _ in range(2):
            if _create_exclusive(self.fs, self.path, self._record()):
                self._thread = threading.Thread(target=self._renew, name="s2s-lease", daemon=True)
                self._thread.start()
                return
            held = read_json(self.fs, self.path) or {}
            if not self._stale(held):
                raise LeaseHeld(f"{self.output}: another run is writing here (pid {held.get('pid')} on {held.get('host')}, "
                                f"lease until {held.get('expires_utc')}). Wait for it to finish, then rerun with --resume; "
                                f"if that run is dead, its lease expires by then.")
            if read_json(self.fs, self.path) == held:  # still the dead run's lease: take it over
                delete_if_present(self.fs, self.path)
        raise LeaseHeld(f"{self.output}: another run took the lease at the same moment; rerun with --resume later.")

    def _renew(self) -> None:
        while not self._stop.wait(self.RENEW_EVERY):
            held = read_json(self.fs, self.path) or {}
            if held.get("owner") != self.owner:
                return  # taken over after this process stalled past the expiry: the commits stay exactly-once anyway
            write_json(self.fs, self.path, self._record())

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        if (read_json(self.fs, self.path) or {}).get("owner") == self.owner:
            delete_if_present(self.fs, self.path)
