"""The lease on a translate output folder: one live run at a time, and a fencing token for its writes.

    OUT/_lease/epoch-0000000007.json    the run that holds the folder: owner, host, pid, until when

Taking the lease creates the next epoch's file by a real conditional create: a hard link, which fails
where the name exists, on a local or POSIX file system; a PutObject with `If-None-Match: *` on S3. Of two
runs that start together exactly one creates epoch N+1; the other is refused (exit 3). The holder of the
highest epoch owns the folder. Epoch numbers only grow (a released lease keeps its file, marked released),
so a run that lost its lease can never see its own epoch on top again.

The epoch is the fencing token. Every write the run makes to the folder first checks that its epoch is
still on top and its lease unexpired (`check`, and `Fence.check` in the Ray tasks that commit); the
output folder adds a fence the storage enforces on top of that (s2s/commit.py). A thread renews the
lease; when it finds a higher epoch, or cannot renew before the lease would expire, the run has lost it:
the driver is interrupted and the run stops with exit 3, committing nothing more.

A lease is free to take once it has expired, once its run released it, or at once where its owner was a
process on this host (same hostname and boot) that no longer runs: gone, a zombie left unreaped by a PID 1
that does not reap (many containers), or a new process under the same pid (its start time differs).
"""

from __future__ import annotations

import _thread
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from s2s.storage import PreconditionFailed, is_s3, is_uri, put_object_if, s3_list, s3_read, with_key, write_local

LEASE_DIR = "_lease"
SECONDS = 120.0  # a lease's life without renewal


class LeaseHeld(RuntimeError):
    """Another live run owns the output folder (exit 3: retry later)."""


class LeaseLost(RuntimeError):
    """This run no longer owns the output folder: another run took it over, or the lease could not be renewed."""


def _epoch_name(epoch: int) -> str:
    return f"epoch-{epoch:010d}.json"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> int | None:
    """The process's start time since boot (clock ticks), None where there is no such process or it is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces and parentheses
    if fields[0] in ("Z", "X"):  # exited, waiting to be reaped: dead for our purposes
        return None
    return int(fields[19])


def owner_alive(record: dict) -> bool | None:
    """Whether the process that wrote `record` still runs: True or False where it ran on this host, None elsewhere."""
    if record.get("host") != socket.gethostname() or record.get("boot_id") != _boot_id() or not record.get("pid"):
        return None
    if not Path("/proc").is_dir():  # no procfs: only whether the pid exists
        try:
            os.kill(int(record["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    ticks = _start_ticks(int(record["pid"]))
    return ticks is not None and (record.get("pid_start") is None or ticks == record["pid_start"])


def is_live(record: dict | None, now: float | None = None) -> bool:
    """Whether a lease record still holds the folder."""
    if not record or record.get("released"):
        return False
    if record.get("expires", 0) < (now or time.time()):
        return False
    return owner_alive(record) is not False


# ---------------------------------------------------------------- the lease folder on each storage


class _LeaseStore:
    """`OUT/_lease/` on a local or POSIX file system, or under an s3:// prefix."""

    def __init__(self, output: str):
        self.output = output.rstrip("/")
        self.s3 = is_s3(output)
        if is_uri(output) and not self.s3:
            raise ValueError(f"{output}: an output on {output.split('://')[0]}:// is not supported; its lease needs a conditional "
                             "create, which s2s-job does for local and POSIX paths and s3://. Write to one of those.")
        self.dir = f"{self.output}/{LEASE_DIR}"

    def epochs(self) -> list[int]:
        if self.s3:
            names = list(s3_list(self.dir))
        else:
            try:
                names = os.listdir(self.dir)
            except FileNotFoundError:
                names = []
        return sorted(int(n[6:16]) for n in names if n.startswith("epoch-") and n.endswith(".json") and n[6:16].isdigit())

    def read(self, epoch: int) -> tuple[dict | None, str | None]:
        """(record, its version: the S3 ETag), (None, None) where it is gone."""
        path = f"{self.dir}/{_epoch_name(epoch)}"
        if self.s3:
            got = s3_read(with_key(self.output, _key(self.dir, _epoch_name(epoch))))
            return (json.loads(got[0]), got[1]) if got else (None, None)
        try:
            return json.loads(Path(path).read_text()), None
        except FileNotFoundError:
            return None, None
        except json.JSONDecodeError:  # never half-written (link and rename are whole); read as held, to be safe
            return {"expires": float("inf"), "owner": "?"}, None

    def create(self, epoch: int, record: dict) -> str | None | bool:
        """Create the epoch's file only if it does not exist: False where it does, else True (its ETag on S3)."""
        data = json.dumps(record, indent=2).encode()
        if self.s3:
            try:
                return put_object_if(with_key(self.output, _key(self.dir, _epoch_name(epoch))), data, if_none_match=True)
            except PreconditionFailed:
                return False
        os.makedirs(self.dir, exist_ok=True)
        tmp = Path(self.dir) / f".new-{uuid.uuid4().hex}"
        tmp.write_bytes(data)
        try:
            os.link(tmp, Path(self.dir) / _epoch_name(epoch))  # atomic, and fails where the name exists: a create-only publish
        except FileExistsError:
            return False
        finally:
            tmp.unlink()
        return True

    def rewrite(self, epoch: int, record: dict, etag: str | None) -> str | None:
        """Rewrite the run's own epoch file (renewal, release); on S3 only if nobody else changed it."""
        data = json.dumps(record, indent=2).encode()
        if self.s3:
            return put_object_if(with_key(self.output, _key(self.dir, _epoch_name(epoch))), data, if_match=etag)
        write_local(Path(self.dir) / _epoch_name(epoch), data)
        return None

    def remove_below(self, epoch: int) -> None:
        """Tidy: older epochs' files (the newest one stays, and with it the count)."""
        from s2s.storage import delete_object_if

        for e in self.epochs():
            if e < epoch - 1:
                if self.s3:
                    delete_object_if(with_key(self.output, _key(self.dir, _epoch_name(e))))
                else:
                    Path(self.dir, _epoch_name(e)).unlink(missing_ok=True)


def _key(prefix_uri: str, name: str) -> str:
    from s2s.storage import s3_parts

    return f"{s3_parts(prefix_uri)[1].rstrip('/')}/{name}"


# ---------------------------------------------------------------- checking a lease from any process


@dataclass(frozen=True)
class Fence:
    """What a process needs to check that a run still holds its lease: picklable, for Ray tasks and actors."""

    output: str
    epoch: int
    owner: str
    margin: float = 5.0  # seconds the lease must have left for a write to start

    def check(self) -> None:
        """Raise LeaseLost unless this epoch is still the highest, owned by this run and unexpired."""
        store = _LeaseStore(self.output)
        top = max(store.epochs(), default=0)
        if top != self.epoch:
            raise LeaseLost(f"{self.output}: this run's lease (epoch {self.epoch}) was taken over by epoch {top}; "
                            "it commits nothing more")
        record, _ = store.read(top)
        if not record or record.get("owner") != self.owner:
            raise LeaseLost(f"{self.output}: the lease file of epoch {self.epoch} is not this run's any more")
        if record.get("released") or record.get("expires", 0) < time.time() + self.margin:
            raise LeaseLost(f"{self.output}: this run's lease (epoch {self.epoch}) expired before it was renewed; "
                            "it commits nothing more")


class Lease:
    """The live run's hold on an output folder (see the module docstring). `acquire`, then `release`."""

    def __init__(self, output: str, seconds: float = SECONDS):
        if seconds < 2:
            raise ValueError(f"a lease must last at least 2 seconds, got {seconds}")
        self.output, self.seconds = output.rstrip("/"), seconds
        self.store = _LeaseStore(self.output)
        self.owner = uuid.uuid4().hex
        self.epoch = 0
        self.etag: str | None = None
        self.valid_until = 0.0
        self.lost: str | None = None  # why, once the lease is lost
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._interrupt = False

    def _record(self, released: bool = False) -> dict:
        now = time.time()
        ticks = _start_ticks(os.getpid())
        return {"owner": self.owner, "epoch": self.epoch, "host": socket.gethostname(), "boot_id": _boot_id(), "pid": os.getpid(),
                "pid_start": ticks, "expires": 0.0 if released else now + self.seconds, "released": released,
                "expires_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + self.seconds))}

    @property
    def fence(self) -> Fence:
        return Fence(self.output, self.epoch, self.owner, margin=min(5.0, self.seconds / 4))

    def acquire(self, interrupt_main: bool = True) -> int:
        """Take the lease (the next epoch) or raise LeaseHeld naming the run that holds it; return the epoch.

        With `interrupt_main`, losing the lease later interrupts the main thread (KeyboardInterrupt, which
        the caller turns into LeaseLost through `raise_if_lost`)."""
        top = max(self.store.epochs(), default=0)
        if top:
            held, _ = self.store.read(top)
            if is_live(held):
                raise LeaseHeld(f"{self.output}: another run is writing here (pid {held.get('pid')} on {held.get('host')}, "
                                f"epoch {top}, lease until {held.get('expires_utc')}). Wait for it to finish, then rerun with "
                                "--resume; if that run is dead, its lease expires by then.")
        self.epoch = top + 1
        record = self._record()
        created = self.store.create(self.epoch, record)
        if created is False:
            held, _ = self.store.read(self.epoch)
            raise LeaseHeld(f"{self.output}: another run took the lease at the same moment (pid {(held or {}).get('pid')} on "
                            f"{(held or {}).get('host')}); rerun with --resume later.")
        self.etag = created if isinstance(created, str) else None
        self.valid_until = record["expires"]
        self.store.remove_below(self.epoch)
        self._interrupt = interrupt_main
        self._thread = threading.Thread(target=self._renew, name="s2s-lease", daemon=True)
        self._thread.start()
        return self.epoch

    def check(self) -> None:
        """Raise LeaseLost where this run no longer holds its lease (by the renewal thread's finding or now)."""
        if self.lost:
            raise LeaseLost(self.lost)
        if time.time() > self.valid_until - min(5.0, self.seconds / 4):
            self._lose(f"{self.output}: this run's lease (epoch {self.epoch}) could not be renewed in time; it commits nothing more")
            raise LeaseLost(self.lost)
        self.fence.check()

    def raise_if_lost(self) -> None:
        if self.lost:
            raise LeaseLost(self.lost)

    def _lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
            if self._interrupt:
                _thread.interrupt_main()  # the driver may be waiting on Ray: stop it there, at once

    def _renew(self) -> None:
        every = self.seconds / 6
        while not self._stop.wait(every):
            try:
                top = max(self.store.epochs(), default=0)
                record, etag = self.store.read(self.epoch)
                if top != self.epoch or not record or record.get("owner") != self.owner:
                    self._lose(f"{self.output}: this run's lease (epoch {self.epoch}) was taken over by epoch {top}; "
                               "it commits nothing more")
                    return
                new = self._record()
                self.etag = self.store.rewrite(self.epoch, new, etag or self.etag)
                self.valid_until = new["expires"]
            except Exception as e:  # noqa: BLE001 - storage unreachable: keep trying while the lease lasts
                if time.time() > self.valid_until - min(5.0, self.seconds / 4):
                    self._lose(f"{self.output}: this run's lease (epoch {self.epoch}) could not be renewed ({e}); "
                               "it commits nothing more")
                    return

    def release(self) -> None:
        """Stop renewing and mark the epoch released, so that the next run need not wait for it to expire."""
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self.lost or not self.epoch:
            return
        try:
            record, etag = self.store.read(self.epoch)
            if record and record.get("owner") == self.owner:
                self.store.rewrite(self.epoch, self._record(released=True), etag or self.etag)
        except (OSError, PreconditionFailed):
            pass  # it expires anyway
