"""End to end through a Ray Jobs server: `ray start --head` on loopback, then jobs/submit_translate.sh and
`s2s-job submit`, whose exit code must be the job's own command's (0, 1, 2, 3), not `ray job submit`'s 0 or 1.

The head runs in its own process group with its own temp dir, and teardown stops that `ray start`, then kills what
is left of its group only: `ray stop` would kill every Ray process on the machine, other people's runs included.
"""

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from s2s.lease import Lease

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parts(folder: Path):
    return pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("part-*.parquet"))])


@pytest.fixture(scope="module")
def ray_head():
    gcs, dashboard = _free_port(), _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayj", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    # Ray 2.60 turns token authentication on: the head and every client share one token, as on a real cluster
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    cmd = ["ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--num-cpus", "2",
           "--num-gpus", "0", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
           "--temp-dir", temp_dir, "--disable-usage-stats",
           # its own agent port too: Ray's default (52365) is taken by any other Ray on the machine that runs a dashboard,
           # and then the job server answers "No available agent to submit job" until the deadline
           "--dashboard-agent-listen-port", str(_free_port())]
    head = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 300  # a readiness bound: on 2 loaded cores the first job alone took over 2 minutes
        while True:
            try:
                request = urllib.request.Request(f"{address}/api/version", headers={"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"})
                with urllib.request.urlopen(request, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if head.poll() is not None or time.time() > deadline:
                out = head.stdout.read() if head.poll() is not None else "(still running)"
                pytest.fail(f"Ray head did not come up at {address}: {out[-2000:]}")
            time.sleep(1)
        while True:  # the dashboard answers before the node's job agent registers: wait until a job runs
            probe = subprocess.run(["ray", "job", "submit", "--address", address, "--", "true"], env=env, capture_output=True,
                                   text=True, timeout=120)
            if probe.returncode == 0:
                break
            if time.time() > deadline:
                pytest.fail(f"the job server at {address} never ran a job: {probe.stderr[-2000:]}")
            time.sleep(2)
        yield address, env
    finally:
        # SIGTERM to `ray start` alone: with nothing left running it drains the node and stops its processes in 2 s
        # (SIGTERM to the whole group kills the GCS too, and the drain then waits 30 s for it; so does a leftover
        # detached actor); then SIGKILL whatever of the group is left
        head.terminate()
        try:
            head.wait(5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        head.wait(10)


def test_exit_codes_arrive_through_the_jobs_server(ray_head, tiny_model_dir, corpus_300, tmp_path):
    """jobs/submit_translate.sh exits with the translate run's own code, 2, 3, 1 and 0 in turn, on one date's output;
    the last run, with the gate back at its default, finds every shard committed and only writes _SUCCESS."""
    address, head_env = ray_head
    out = tmp_path / "out" / "date=2026-11-21"
    env = {**head_env, "RAY_ADDRESS": address, "MODEL": str(tiny_model_dir)}

    def submit(*more: str) -> subprocess.CompletedProcess:
        cmd = ["bash", "jobs/submit_translate.sh", str(corpus_300), str(tmp_path / "out" / "date={date}"), "--date", "2026-11-21",
               "--beam-size", "1", "--max-decoding-length", "30", "--rows-per-shard", "100", *more]
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)

    def said(done: subprocess.CompletedProcess) -> str:
        return done.stdout[-3000:] + done.stderr[-3000:]

    bad = submit("--text-column", "no_such_column")  # 2: fix the call
    assert bad.returncode == 2 and "no column 'no_such_column'" in bad.stdout, said(bad)

    held = Lease(str(out))  # 3: another live run (this test process) holds the output's lease
    held.acquire(interrupt_main=False)
    try:
        busy = submit()
    finally:
        held.release()
    assert busy.returncode == 3 and "another run is writing here" in busy.stdout, said(busy)

    gated = submit("--max-error-rate", "0")  # 1: every row committed, but 3 of 300 rows have an error
    assert gated.returncode == 1 and "is over --max-error-rate" in gated.stdout, said(gated)
    assert json.loads((out / "_run.json").read_text())["status"] == "failed_error_rate" and not (out / "_SUCCESS").exists()

    done = submit()  # 0: the default gate (5%) passes; nothing is translated again
    assert done.returncode == 0 and "nothing to do" in done.stdout and "succeeded" in done.stderr, said(done)
    table = _parts(out)
    assert table.num_rows == 300 and sorted(table.column("keep").to_pylist()) == list(range(300))
    run = json.loads((out / "_run.json").read_text())
    assert run["rows"] == 300 and run["status"] == "complete" and run["errors"] == 3  # the null, blank and 400-word rows
    assert (out / "_SUCCESS").is_file()


def test_a_killed_driver_and_a_stopped_job_exit_3(ray_head, tmp_path):
    """A driver killed on the cluster, and a submitter killed by its scheduler (which stops the job), both exit 3."""
    address, head_env = ray_head
    env = {**head_env, "RAY_ADDRESS": address}
    killed = subprocess.run(["s2s-job", "submit", "--", "sh", "-c", "kill -9 $$"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == 3 and "FAILED" in killed.stderr, killed.stdout[-3000:] + killed.stderr[-3000:]

    log = tmp_path / "submit.log"
    with log.open("w") as sink:
        waiting = subprocess.Popen(["s2s-job", "submit", "--", "sh", "-c", "echo started; sleep 300"], env=env, stdout=sink,
                                   stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while "started" not in log.read_text() and waiting.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        waiting.send_signal(signal.SIGTERM)  # systemctl stop, Airflow's timeout, Kubernetes: the submitter gets SIGTERM
        assert waiting.wait(120) == 3, log.read_text()[-3000:]
    job_id = re.search(r"submitted job (\S+)", log.read_text()).group(1)
    status = subprocess.run(["ray", "job", "status", "--address", address, job_id], env=env, capture_output=True, text=True,
                            timeout=120)
    assert f"Job '{job_id}' was stopped" in status.stdout + status.stderr, status.stdout + status.stderr


def test_train_submitted_as_a_ray_job_passes_its_exit_code(ray_head, small_corpus, tmp_path):
    """jobs/submit_train.sh reaches `s2s-job train` on the cluster (the run directory positional, the options
    passed on) and its exit code comes back: bad data is 2, naming the column. Training itself through
    RAY_ADDRESS, on two nodes with its run on S3, is tests/test_cluster_nodes.py's."""
    address, head_env = ray_head
    env = {**head_env, "RAY_ADDRESS": address, "WORKERS": "2", "RUN_DIR": str(tmp_path / "run")}
    cmd = ["bash", "jobs/submit_train.sh", "--data", str(small_corpus), "--source-column", "english", "--max-steps", "2"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert "no column 'english'" in done.stdout + done.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_submit_without_a_server_or_with_a_wrong_token(ray_head):
    """No address and a refused token are configuration (2); a server that does not answer may come back (3)."""
    address, head_env = ray_head
    cmd = ["s2s-job", "submit", "--", "true"]
    unset = subprocess.run(cmd, env={k: v for k, v in head_env.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")},
                           capture_output=True, text=True, timeout=120)
    assert unset.returncode == 2 and "RAY_ADDRESS" in unset.stderr, unset.stderr
    wrong = subprocess.run(cmd, env={**head_env, "RAY_ADDRESS": address, "RAY_AUTH_TOKEN": "0" * 64}, capture_output=True,
                           text=True, timeout=120)
    assert wrong.returncode == 2 and "refused the token" in wrong.stderr, wrong.stderr
    away = subprocess.run([*cmd[:2], "--address", f"http://127.0.0.1:{_free_port()}", *cmd[2:]], env=head_env,
                          capture_output=True, text=True, timeout=120)
    assert away.returncode == 3 and "Failed to connect" in away.stderr, away.stderr


def test_exit_code_mapping():
    from s2s.submit import exit_code

    assert exit_code("SUCCEEDED", 0) == 0
    assert [exit_code("FAILED", c) for c in (1, 2, 3)] == [1, 2, 3]
    # a driver killed by a signal (Ray reports -9 or 137), a runtime env that never started, a stopped job: retry
    assert {exit_code("FAILED", c) for c in (-9, 137, 4, None)} == {3} and exit_code("STOPPED", None) == 3
