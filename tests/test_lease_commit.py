"""The lease and the fenced output folder, in one process, on local disk and on moto's S3 (issue #26).

The end-to-end tests (test_exactly_once.py, test_model_based.py) stop a stalled run by several layers at
once: the driver's renewal thread, `Lease.check`'s expiry test, `Fence.check` before every write, and what
the storage itself refuses. Here each layer is tried on its own:

- Hypothesis draws programs of several runs on one folder (take the lease, stall past the expiry, publish or
  remove a part, release) and a model says which writes must land; the folder must hold exactly the parts
  the model says, each written by the epoch that held the folder at the time.
- The same programs with `Fence.check` made a no-op: on local disk the per-epoch staging folder, which the
  next epoch revokes, must still stop every write of a run that was taken over.
- Threads that take the lease at the same moment: exactly one gets it.
- On S3, what the conditional requests refuse on their own: a stale run cannot replace a part
  (If-None-Match: *) nor delete one written since it looked (If-Match), and a run that loses the lease
  between its checks deletes what it just put.

A stalled run is made by stopping its renewal thread and rewriting its lease record as expired: what a
frozen process finds when it wakes.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, multiple, rule, run_state_machine_as_test

from s2s import lease as lease_mod
from s2s.commit import KEEP, PartExists, S3Folder, open_folder
from s2s.lease import Fence, Lease, LeaseHeld, LeaseLost
from s2s.storage import put_object_if, s3_client, s3_list, s3_read, with_key

NAMES = ["part-a.parquet", "part-b.parquet", "part-c.parquet"]
_places = itertools.count()


@pytest.fixture(params=["local", "s3"])
def output_factory(request, tmp_path, monkeypatch):
    """A function that returns a new, empty output location on the store under test."""
    if request.param == "local":
        return lambda: str(tmp_path / f"out{next(_places)}")
    bucket = new_bucket(request.getfixturevalue("s3_env"), monkeypatch)
    return lambda: f"s3://{bucket}/out{next(_places)}"


def new_bucket(env: dict, monkeypatch) -> str:
    """Point this process at moto's server the standard way (AWS_ENDPOINT_URL...) and make a bucket there."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s3_client.cache_clear()  # a client made before the variables were set would talk to AWS
    bucket = f"lease-{uuid.uuid4().hex[:12]}"
    s3_client(None).create_bucket(Bucket=bucket)
    return bucket


def listing(output: str) -> set[str]:
    if output.startswith("s3://"):
        return {k for k in s3_list(output) if k.split("/", 1)[0] not in KEEP}
    root = Path(output)
    return {p.name for p in root.iterdir() if p.name not in KEEP} if root.is_dir() else set()


def part_owner(output: str, name: str) -> int:
    data = s3_read(with_key(output, f"{output.split('/', 3)[3]}/{name}"))[0] if output.startswith("s3://") \
        else (Path(output) / name).read_bytes()
    return json.loads(data)["epoch"]


def stall(lease: Lease) -> None:
    """The run freezes past its lease: no more renewal, and the record it left says expired."""
    lease._stop.set()
    if lease._thread:
        lease._thread.join()
    record, etag = lease.store.read(lease.epoch)
    record = {**record, "expires": time.time() - 1}
    if lease.store.s3:
        uri = with_key(lease.output, lease_mod._key(lease.store.dir, lease_mod._epoch_name(lease.epoch)))
        put_object_if(uri, json.dumps(record).encode())
    else:
        Path(lease.store.dir, lease_mod._epoch_name(lease.epoch)).write_text(json.dumps(record))


class Run:
    def __init__(self, lease: Lease, folder):
        self.lease, self.folder = lease, folder

    def __repr__(self) -> str:
        return f"Run(epoch={self.lease.epoch})"


class FolderModel(RuleBasedStateMachine):
    """Runs on one output folder; the model: which epoch is on top, whether it still holds, and the parts."""

    runs = Bundle("runs")
    output_factory = None
    fenced = True  # False: Fence.check is a no-op (patched by the test), the storage's own fence must hold

    def __init__(self):
        super().__init__()
        self.output = type(self).output_factory()
        self.top = 0  # the highest epoch taken
        self.holds = False  # whether the top epoch's run still holds the folder (not stalled, not released)
        self.parts: dict[str, int] = {}  # name -> the epoch that published it
        self.leases: list[Lease] = []

    def may_write(self, run: Run) -> bool:
        if self.fenced:
            return run.lease.epoch == self.top and self.holds
        return run.lease.epoch == self.top  # without the fence check only a newer epoch stops a run

    @rule(target=runs)
    def start(self):
        lease = Lease(self.output, seconds=60)
        self.leases.append(lease)
        try:
            epoch = lease.acquire(interrupt_main=False)
        except LeaseHeld:
            assert self.holds, "refused a lease nobody holds"
            return multiple()
        assert not self.holds, f"epoch {epoch} taken while epoch {self.top} still holds the folder"
        assert epoch == self.top + 1
        self.top, self.holds = epoch, True
        folder = open_folder(self.output, lease.fence)
        folder.begin()
        return Run(lease, folder)

    @rule(run=runs)
    def stall_past_expiry(self, run: Run):
        if run.lease.epoch == self.top and self.holds:
            stall(run.lease)
            self.holds = False

    @rule(run=runs)
    def release(self, run: Run):
        run.lease.release()
        if run.lease.epoch == self.top and self.holds:
            self.holds = False

    @rule(run=runs, name=st.sampled_from(NAMES))
    def publish(self, run: Run, name: str):
        data = json.dumps({"epoch": run.lease.epoch, "nonce": uuid.uuid4().hex}).encode()
        try:
            run.folder.publish(name, data)
        except LeaseLost:
            assert not self.may_write(run), f"{run} lost a lease it holds"
            return
        except PartExists:
            assert self.may_write(run) and name in self.parts, f"{run}: {name} refused though it is not there"
            return
        assert self.may_write(run), f"{run} published {name} after it lost the folder (top epoch {self.top})"
        assert name not in self.parts, f"{run} replaced {name}"
        self.parts[name] = run.lease.epoch

    @rule(run=runs, name=st.sampled_from(NAMES))
    def remove(self, run: Run, name: str):
        meta = s3_list(run.folder.output).get(name) if isinstance(run.folder, S3Folder) else None
        try:
            run.folder.remove(name, meta)
        except LeaseLost:
            assert not self.may_write(run), f"{run} lost a lease it holds"
            return
        assert self.may_write(run), f"{run} removed {name} after it lost the folder (top epoch {self.top})"
        self.parts.pop(name, None)

    @invariant()
    def folder_holds_what_the_model_says(self):
        assert listing(self.output) == set(self.parts)
        for name, epoch in self.parts.items():
            assert part_owner(self.output, name) == epoch

    def teardown(self):
        for lease in self.leases:
            lease._stop.set()
            if lease._thread:
                lease._thread.join()


SETTINGS = settings(max_examples=15, stateful_step_count=12, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


def test_only_the_run_holding_the_folder_writes_to_it(output_factory):
    machine = type("Machine", (FolderModel,), {"output_factory": staticmethod(output_factory)})
    run_state_machine_as_test(machine, settings=SETTINGS)


def test_without_the_fence_check_local_staging_still_stops_a_run_taken_over(tmp_path, monkeypatch):
    """Defense in depth on local disk: a stale run that skipped every lease check still cannot write, because
    the next epoch revoked the staging folder every write goes through."""
    monkeypatch.setattr(Fence, "check", lambda self: None)
    outputs = (str(tmp_path / f"out{i}") for i in itertools.count())
    machine = type("Machine", (FolderModel,), {"output_factory": staticmethod(lambda: next(outputs)), "fenced": False})
    run_state_machine_as_test(machine, settings=SETTINGS)


@pytest.mark.parametrize("n", [2, 6])
def test_runs_taking_the_lease_together_get_one_epoch(output_factory, n):
    for _ in range(4):
        output = output_factory()
        barrier = threading.Barrier(n)
        got: list = [None] * n
        leases = [Lease(output, seconds=60) for _ in range(n)]

        def take(i: int):
            barrier.wait()
            try:
                got[i] = leases[i].acquire(interrupt_main=False)
            except LeaseHeld as e:
                got[i] = e

        threads = [threading.Thread(target=take, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for lease in leases:
            lease.release()
        assert sorted(g for g in got if isinstance(g, int)) == [1], got
        assert all(isinstance(g, (int, LeaseHeld)) for g in got), got


def test_on_s3_the_store_refuses_what_a_stale_run_would_overwrite_or_delete(s3_env, monkeypatch):
    """S3 has no staging to revoke; a stale run that skipped its checks still cannot replace a part (If-None-Match)
    nor delete the version another run wrote after it looked (If-Match)."""
    bucket = new_bucket(s3_env, monkeypatch)
    output = f"s3://{bucket}/out"
    old, new = Lease(output, seconds=60), Lease(output, seconds=60)
    old.acquire(interrupt_main=False)
    stale = open_folder(output, old.fence)
    stale.publish("part-a.parquet", b'{"epoch": 1}')
    seen = s3_list(output)["part-a.parquet"]
    stall(old)
    new.acquire(interrupt_main=False)
    current = open_folder(output, new.fence)
    current.remove("part-a.parquet", seen)
    current.publish("part-a.parquet", b'{"epoch": 2}')
    current.publish("part-b.parquet", b'{"epoch": 2}')

    with pytest.raises(LeaseLost, match="taken over by epoch 2"):
        stale.publish("part-c.parquet", b"{}")
    monkeypatch.setattr(Fence, "check", lambda self: None)
    with pytest.raises(PartExists):
        stale.publish("part-b.parquet", b'{"epoch": 1}')
    stale.remove("part-a.parquet", seen)  # the version it saw is gone: If-Match refuses to delete the new one
    assert {k: json.loads(s3_read(stale.uri(k))[0])["epoch"] for k in ("part-a.parquet", "part-b.parquet")} == \
        {"part-a.parquet": 2, "part-b.parquet": 2}
    new.release()


def test_on_s3_a_run_that_loses_the_lease_while_it_puts_deletes_its_put(s3_env, monkeypatch):
    bucket = new_bucket(s3_env, monkeypatch)
    output = f"s3://{bucket}/out"
    lease = Lease(output, seconds=60)
    lease.acquire(interrupt_main=False)
    folder = open_folder(output, lease.fence)
    checks = itertools.count()

    def taken_over_after_first_check(self):
        if next(checks) > 0:
            raise LeaseLost("taken over while the part was being put")

    monkeypatch.setattr(Fence, "check", taken_over_after_first_check)
    with pytest.raises(LeaseLost):
        folder.publish("part-a.parquet", b"rows")
    assert "part-a.parquet" not in s3_list(output)
    lease.release()


def test_a_run_that_fails_after_losing_its_lease_names_the_lease(tiny_model_dir, tmp_path, monkeypatch):
    """A run frozen past its lease may first trip over what the new owner removed (its staging files) when it
    wakes; the run's error is then the lost lease (exit 3, 'taken over'), not a missing temporary file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from s2s import translate as translate_mod
    from s2s.config import TranslateConfig

    pq.write_table(pa.table({"text": ["I like cats."]}), tmp_path / "in.parquet")
    out = str(tmp_path / "out")

    def frozen_then_woken(cfg, lease, *rest):
        stall(lease)
        Lease(out, seconds=60).acquire(interrupt_main=False)  # another run takes the folder over
        raise FileNotFoundError(f"{out}/_staging/e1/_tmp-attempts.json.tmp")

    monkeypatch.setattr(translate_mod, "_run", frozen_then_woken)
    with pytest.raises(LeaseLost, match="taken over by epoch 2") as e:
        translate_mod.run_translate(TranslateConfig(input=str(tmp_path / "in.parquet"), output=out, model=str(tiny_model_dir),
                                                    executor="local"))
    assert isinstance(e.value.__cause__, FileNotFoundError)
    # a failure that has nothing to do with the lease keeps its own error
    monkeypatch.setattr(translate_mod, "_run", lambda *a: (_ for _ in ()).throw(FileNotFoundError("elsewhere")))
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        translate_mod.run_translate(TranslateConfig(input=str(tmp_path / "in.parquet"), output=str(tmp_path / "out2"),
                                                    model=str(tiny_model_dir), executor="local"))
