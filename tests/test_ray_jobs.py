"""End to end through a Ray Jobs server: `ray start --head` on loopback, then jobs/submit_translate.sh.

The head runs in its own process group with its own temp dir, and teardown kills only that group:
`ray stop` would kill every Ray process on the machine, other people's runs included.
"""

import json
import os
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
from s2s.run_dir import checkpoint_file

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
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            try:
                head.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue


def test_translate_submitted_as_a_ray_job_then_rerun_is_a_no_op(ray_head, tiny_model_dir, corpus_300, tmp_path):
    address, head_env = ray_head
    out = tmp_path / "out" / "date=2026-11-21"
    env = {**head_env, "RAY_ADDRESS": address, "MODEL": str(tiny_model_dir)}
    cmd = ["bash", "jobs/submit_translate.sh", str(corpus_300), str(tmp_path / "out" / "date={date}"), "--date", "2026-11-21",
           "--beam-size", "1", "--max-decoding-length", "30", "--rows-per-shard", "100"]
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "succeeded" in first.stdout + first.stderr
    table = _parts(out)
    assert table.num_rows == 300 and sorted(table.column("keep").to_pylist()) == list(range(300))
    run = json.loads((out / "_run.json").read_text())
    assert run["rows"] == 300 and run["status"] == "complete" and run["errors"] == 3  # the null, blank and 400-word rows

    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "nothing to do" in second.stdout + second.stderr
    assert _parts(out).num_rows == 300


def test_train_submitted_as_a_ray_job(ray_head, small_corpus, tmp_path):
    """`s2s-job train` reaches the cluster through RAY_ADDRESS: 4 DDP workers on the head's 2 CPUs."""
    address, head_env = ray_head
    run = tmp_path / "run"
    env = {**head_env, "RAY_ADDRESS": address, "WORKERS": "4", "RUN_DIR": str(run)}
    cmd = ["bash", "jobs/submit_train.sh", "--data", str(small_corpus), "--src-vocab-size", "500", "--tgt-vocab-size", "500",
           "--emb-dim", "16", "--hidden-size", "32", "--batch-tokens", "800", "--max-steps", "6", "--log-every", "2"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "on 4 worker(s), CPU/gloo" in done.stdout + done.stderr
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "epoch" and records[-1]["step"] == 6 and (checkpoint_file(run, "best")).is_file()
