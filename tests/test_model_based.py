"""A model-based test of exactly-once (issue #26): Hypothesis draws interleavings of what a night does around
the translate job and checks the output folder after every step.

The steps: runs started in the background (plain, --resume, --overwrite, with several shard sizes, some with an
engine that fails once), two started together, a driver killed (SIGKILL to its process group), a run frozen
past its lease (SIGSTOP) while another takes the folder over and then woken (SIGCONT), input files appended,
rewritten in place with other rows, and removed; on local disk and on moto's S3. The model is the input's
history: every version of every file, and every state the input folder has been in.

The invariant, after every step: no committed row is wrong (its id names a row of some version of its file,
its text is that row's text, its translation is that text's); no id is committed twice. Once no run is live:
when `_SUCCESS` exists, the parts hold exactly the rows of one state the input has been in, each once, and
`_SUCCESS` names that state's files. A run alone on the folder with --resume or --overwrite, with no kill and
no input change during it, exits 0: a dead or stalled run never blocks the next.

Faults come from the test only: tests/faults/sitecustomize.py (`echo` answers "T:" + text, exact and fast;
`slow` leaves room for kills; `broken_engine_once` fails the first engine), signals by pid, and writes to the
input. S2S_MODEL_BASED_EXAMPLES raises the number of drawn programs for a longer exploration.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

from s2s.translator import as_text
from test_exactly_once import FAST, cli, finish

LEASE = 2.0
EXAMPLES = int(os.environ.get("S2S_MODEL_BASED_EXAMPLES", "3"))
_places = itertools.count()


class Place:
    """Where one drawn program's input and output live: a local folder or an S3 prefix, through pyarrow."""

    def __init__(self, fs: pafs.FileSystem, base: str, uri: str):
        self.fs, self.base, self.uri = fs, base, uri  # base: the filesystem's path; uri: what the CLI is given

    def write(self, name: str, rows: list[str]) -> None:
        with self.fs.open_output_stream(f"{self.base}/in/{name}") as f:
            pq.write_table(pa.table({"text": pa.array(rows, pa.string())}), f, row_group_size=10)

    def remove(self, name: str) -> None:
        self.fs.delete_file(f"{self.base}/in/{name}")

    def listing(self) -> dict[str, pafs.FileInfo]:
        infos = self.fs.get_file_info(pafs.FileSelector(f"{self.base}/out", allow_not_found=True))
        return {i.base_name: i for i in infos if i.type == pafs.FileType.File}

    def committed(self) -> tuple[list[dict], dict | None]:
        """The committed rows and _SUCCESS; read again if a part moved away while being read (a live run's)."""
        for attempt in range(20):
            try:
                names = self.listing()
                rows = []
                for name in sorted(n for n in names if n.startswith("part-")):
                    with self.fs.open_input_file(f"{self.base}/out/{name}") as f:
                        rows += pq.read_table(f, columns=["row_id", "text", "translation", "error"]).to_pylist()
                success = None
                if "_SUCCESS" in names:
                    with self.fs.open_input_file(f"{self.base}/out/_SUCCESS") as f:
                        success = json.loads(f.read())
                return rows, success
            except (FileNotFoundError, OSError):
                time.sleep(0.1)
        raise AssertionError("the output folder kept changing under the check")

    def reading(self) -> str | None:
        """The input file of the part committed last: the file a run in flight is most likely reading now."""
        parts = [i for n, i in self.listing().items() if n.startswith("part-")]
        try:
            with self.fs.open_input_file(max(parts, key=lambda i: i.mtime_ns).path) as f:
                return pq.read_table(f, columns=["row_id"]).column(0)[0].as_py().rpartition("#")[0]
        except (ValueError, IndexError, OSError):  # no part, an empty one, or one moved away meanwhile
            return None

    def parts(self) -> dict[str, tuple]:
        return {n: (i.size, i.mtime_ns) for n, i in self.listing().items() if n.startswith("part-")}


def signal_group(proc, sig: int) -> None:
    """Signal a run's whole process group (the driver and what it started), if any of it is left."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def machine(place_factory, model_dir: Path, env: dict):
    class ExactlyOnce(RuleBasedStateMachine):
        """The input's history, the runs in flight, and the folder checked against both."""

        @initialize(sizes=st.lists(st.integers(8, 25), min_size=1, max_size=3), shard=st.sampled_from([4, 7]))
        def start(self, sizes, shard):
            self.place = place_factory()
            self.shard = shard  # the unit size runs use; an --overwrite may change it
            self.versions: dict[str, list[list[str]]] = {}  # file -> every version's rows
            self.present: dict[str, int] = {}  # file -> its version now
            self.states: list[dict[str, int]] = [{}]  # every state the input folder has been in
            self.live: list[dict] = []  # runs in flight: proc, mode, state count at start, whether disturbed
            self.names = itertools.count()
            for n in sizes:
                self.add_file(n)

        def teardown(self):
            for r in getattr(self, "live", []):
                signal_group(r["proc"], signal.SIGCONT)
                signal_group(r["proc"], signal.SIGKILL)
                r["proc"].wait()

        # ---------------------------------------------------------------- the input

        def add_file(self, n: int) -> None:
            name = f"f{next(self.names)}.parquet"
            self.versions[name] = []
            self.put(name, n)

        def put(self, name: str, n: int) -> None:
            v = len(self.versions[name])
            rows = [f"{name} v{v} row {i} ." for i in range(n)]
            self.versions[name].append(rows)
            self.place.write(name, rows)
            self.present[name] = v
            self.changed()

        def changed(self) -> None:
            self.states.append(dict(self.present))
            for r in self.live:
                r["disturbed"] = True

        @rule(n=st.integers(0, 25))
        def append_file(self, n):
            """A nightly partition gains a file (an empty one too)."""
            self.add_file(n)

        @precondition(lambda self: self.present)
        @rule(data=st.data(), n=st.integers(0, 25))
        def rewrite_file(self, data, n):
            """An upstream compaction rewrites a file in place, with other rows."""
            self.put(data.draw(st.sampled_from(sorted(self.present))), n)

        @precondition(lambda self: self.live and self.present)
        @rule()
        def rewrite_while_read(self):
            """Once the run in flight has committed a part, the file it reads last is rewritten with as many rows, other
            texts (an upstream compaction): only the file's identity tells the versions apart."""
            self.let_them_commit(1)
            name = self.place.reading() or max(self.present)
            if name in self.present:
                self.put(name, len(self.versions[name][self.present[name]]))

        @precondition(lambda self: len(self.present) > 1)
        @rule(data=st.data())
        def remove_file(self, data):
            name = data.draw(st.sampled_from(sorted(self.present)))
            self.place.remove(name)
            del self.present[name]
            self.changed()

        # ---------------------------------------------------------------- runs

        def args(self, mode: str, shard: int) -> list[str]:
            if mode == "overwrite":
                self.shard = shard
            shard = self.shard
            extra = {"plain": [], "resume": ["--resume"], "overwrite": ["--overwrite"]}[mode]
            return [f"{self.place.uri}/in", "--output", f"{self.place.uri}/out", "--model", str(model_dir), "--executor", "local",
                    "--rows-per-shard", str(shard), "--lease-seconds", str(LEASE), *FAST, *extra]

        def launch(self, mode: str, shard: int, engine_fails: bool = False) -> dict:
            faults = "echo,slow:0.3" + (f",broken_engine_once:{self.place.base}-{next(self.names)}.marker" if engine_fails else "")
            for r in self.live:
                r["disturbed"] = True
            r = {"proc": cli(*self.args(mode, shard), faults=faults, env=env), "mode": mode, "disturbed": bool(self.live),
                 "engine_fails": engine_fails}
            self.live.append(r)
            return r

        def settle(self, r: dict) -> int:
            code, log = finish(r["proc"])
            self.live.remove(r)
            assert code in (0, 2, 3) or r.get("killed"), log[-3000:]
            if r["mode"] != "plain" and not r["disturbed"] and not r.get("killed") and not r["engine_fails"]:
                # alone on the folder: nothing may block it; a --resume with another shard size is refused, as it should be
                assert code == 0 or (code == 2 and r["mode"] == "resume" and "another model or settings" in log), log[-3000:]
            return code

        @precondition(lambda self: len(self.live) < 2)
        @rule(mode=st.sampled_from(["plain", "resume", "resume", "overwrite"]), shard=st.sampled_from([4, 7, 12]),
              engine_fails=st.booleans(), wait=st.booleans())
        def start_run(self, mode, shard, engine_fails, wait):
            """A run starts; with `wait`, the next step comes once it has committed a part (mid-run)."""
            self.launch(mode, shard, engine_fails)
            if wait:
                self.let_them_commit(1)

        @precondition(lambda self: not self.live)
        @rule(modes=st.lists(st.sampled_from(["resume", "overwrite"]), min_size=2, max_size=2), shard=st.sampled_from([4, 7]))
        def start_two_together(self, modes, shard):
            """Two schedulers start the job on the same folder at once."""
            for mode in modes:
                self.launch(mode, shard)

        @precondition(lambda self: self.live)
        @rule(parts=st.integers(1, 3))
        def let_them_commit(self, parts):
            """Wait until the runs in flight have committed a few more parts (or ended): what comes next lands mid-run."""
            target = len(self.place.parts()) + parts
            deadline = time.time() + 60
            while len(self.place.parts()) < target and all(r["proc"].poll() is None for r in self.live) and time.time() < deadline:
                time.sleep(0.05)

        @precondition(lambda self: self.live)
        @rule(data=st.data())
        def kill_driver(self, data):
            r = data.draw(st.sampled_from(self.live))
            r["killed"] = True
            signal_group(r["proc"], signal.SIGKILL)
            self.settle(r)
            for other in self.live:
                other["disturbed"] = True

        @precondition(lambda self: len(self.live) == 1)
        @rule(mode=st.sampled_from(["resume", "overwrite"]), shard=st.sampled_from([4, 7, 12]))
        def stall_past_the_lease(self, mode, shard):
            """The run in flight freezes past its lease; another takes the folder over and finishes; the first
            wakes and commits nothing more."""
            stalled = self.live[0]
            signal_group(stalled["proc"], signal.SIGSTOP)
            try:
                time.sleep(LEASE + 1.5)
                taker = self.launch(mode, shard)
                taker["disturbed"] = False  # the frozen run is past its lease: nothing may block this one
                code = self.settle(taker)
                after = self.place.parts()
            finally:
                signal_group(stalled["proc"], signal.SIGCONT)
            stalled["disturbed"] = True
            if self.settle(stalled) == 3 and code == 0:
                assert self.place.parts() == after  # the woken run added, replaced and removed nothing

        @precondition(lambda self: self.live)
        @rule()
        def wait_for_all(self):
            for r in list(self.live):
                self.settle(r)

        # ---------------------------------------------------------------- the invariant

        @invariant()
        def no_committed_row_is_wrong(self):
            if not hasattr(self, "place"):
                return
            rows, success = self.place.committed()
            seen = set()
            for r in rows:
                assert r["row_id"] not in seen, f"{r['row_id']} committed twice"
                seen.add(r["row_id"])
                name, _, i = r["row_id"].rpartition("#")
                texts = {v[int(i)] for v in self.versions.get(name, []) if int(i) < len(v)}
                assert r["text"] in texts, f"{r['row_id']} holds {r['text']!r}, a text its file never had there"
                visible, why = as_text(r["text"])
                assert r["translation"] == "T:" + visible and r["error"] is None, r
            if success is None or self.live:
                return
            got = sorted((r["row_id"], r["text"]) for r in rows)
            named = sorted(f["path"].rsplit("/", 1)[1] for f in success["inputs"])
            matches = [state for state in self.states
                       if got == sorted((f"{name}#{i}", t) for name, v in state.items() for i, t in enumerate(self.versions[name][v]))]
            assert matches, f"_SUCCESS, but the parts' {len(rows)} rows are no state the input has been in"
            assert named in [sorted(state) for state in matches], f"_SUCCESS names {named}, not the files of the state its parts hold"
            assert success["rows"] == len(rows)

    return ExactlyOnce


def _settings() -> settings:
    return settings(max_examples=EXAMPLES, stateful_step_count=10, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


def test_exactly_once_on_local_disk(tiny_model_dir, tmp_path):
    def place():
        base = tmp_path / f"p{next(_places)}"
        (base / "in").mkdir(parents=True)
        return Place(pafs.LocalFileSystem(), str(base), str(base))

    run_state_machine_as_test(machine(place, tiny_model_dir, {}), settings=_settings())


def test_exactly_once_on_s3(s3_env, tiny_model_dir):
    s3 = pafs.S3FileSystem(endpoint_override=s3_env["AWS_ENDPOINT_URL"], access_key=s3_env["AWS_ACCESS_KEY_ID"],
                           secret_key=s3_env["AWS_SECRET_ACCESS_KEY"], region=s3_env["AWS_DEFAULT_REGION"], allow_bucket_creation=True)
    s3.create_dir("model-based")

    def place():
        base = f"model-based/p{next(_places)}"
        return Place(s3, base, f"s3://{base}")

    run_state_machine_as_test(machine(place, tiny_model_dir, s3_env), settings=_settings())
