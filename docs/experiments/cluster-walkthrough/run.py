"""Run the commands of docs/cluster.md, as shown there, against a Ray cluster and an S3 server on loopback.

    python docs/experiments/cluster-walkthrough/run.py PAIRS.parquet LOG

What stands in for the cloud: moto's S3 server (the bucket `my-bucket`, reached through AWS_ENDPOINT_URL
and AWS credentials, as any S3-compatible store), and a Ray cluster of three `ray start` nodes on this
machine marked as ray_cluster.yaml marks them: a head of 1 CPU with `s2s_head`, two workers of 1 CPU with
`s2s_worker`, and a Ray Jobs server with token authentication on the head. `ray up` itself needs a cloud
account and is not run. The training and export commands get size options appended (a model of 64 hidden
units, 60 steps, a 20-sentence parity gate) so that the walkthrough takes minutes, not hours; the log shows
each command exactly as it ran, its exit code and the end of its output. Each process this script starts
runs in its own process group and is stopped by that group's id, never by `ray stop`.
"""

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
pairs, log_path = sys.argv[1], Path(sys.argv[2])
log = log_path.open("w")


def say(text: str) -> None:
    print(text, flush=True)
    log.write(text + "\n")
    log.flush()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


started: list[subprocess.Popen] = []


def start(cmd: list[str], env: dict) -> subprocess.Popen:
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    started.append(p)
    return p


def wait_http(url: str, headers: dict | None = None, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2):
                return
        except OSError:
            if time.time() > deadline:
                raise SystemExit(f"{url} did not answer in {seconds} s")
            time.sleep(1)


bin_dir = os.path.dirname(sys.executable)
env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
       "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
env.pop("RAY_ADDRESS", None)
work = Path(tempfile.mkdtemp(prefix="walk"))
env["S2S_RUN_CACHE"], env["S2S_MODEL_CACHE"] = str(work / "runs"), str(work / "models")
try:
    s3_port = free_port()
    start([f"{bin_dir}/moto_server", "-H", "127.0.0.1", "-p", str(s3_port)], env)
    env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{s3_port}"
    wait_http(env["AWS_ENDPOINT_URL"])
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    s3 = pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key="testing", secret_key="testing",
                           region="us-east-1", allow_bucket_creation=True)
    s3.create_dir("my-bucket")
    table = pq.read_table(pairs)
    with s3.open_output_stream("my-bucket/pairs.parquet") as f:
        pq.write_table(table, f)
    for day, start_row in (("2026-11-20", 0), ("2026-11-21", 400)):
        with s3.open_output_stream(f"my-bucket/corpus/date={day}/part-0.parquet") as f:
            pq.write_table(table.select(["en"]).rename_columns(["text"]).slice(start_row, 400), f)
    say(f"S3 server (moto) at {env['AWS_ENDPOINT_URL']}: my-bucket/pairs.parquet ({table.num_rows} pairs), "
        "my-bucket/corpus/date=2026-11-20/ and date=2026-11-21/ (400 sentences each)")

    gcs, dashboard = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayw", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    start(["ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--num-cpus", "1",
           "--resources", '{"s2s_head": 1}', "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
           "--dashboard-port", str(dashboard), "--dashboard-agent-listen-port", str(free_port()), "--temp-dir", temp_dir,
           "--disable-usage-stats"], env)
    env["RAY_ADDRESS"] = f"http://127.0.0.1:{dashboard}"
    wait_http(f"{env['RAY_ADDRESS']}/api/version", {"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"})
    for _ in range(2):
        start(["ray", "start", "--block", "--address", f"127.0.0.1:{gcs}", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
               "--resources", '{"s2s_worker": 1}', "--dashboard-agent-listen-port", str(free_port()),
               "--metrics-export-port", str(free_port()), "--disable-usage-stats",
               # each node its own temp dir: two nodes of one machine in one folder race for the same raylet socket
               "--temp-dir", tempfile.mkdtemp(prefix="rayn", dir="/tmp")], {k: v for k, v in env.items() if k != "RAY_ADDRESS"})
    deadline = time.time() + 300
    os.environ.update({k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})
    import ray

    ray.init(address=f"127.0.0.1:{gcs}", logging_level="ERROR")
    while len([n for n in ray.nodes() if n["Alive"]]) < 3 and time.time() < deadline:
        time.sleep(1)
    role = {n["NodeID"]: "head" if n["Resources"].get("s2s_head") else "worker" for n in ray.nodes() if n["Alive"]}
    ray.shutdown()
    say(f"Ray cluster: head (1 CPU, s2s_head) and 2 workers (1 CPU each, s2s_worker); RAY_ADDRESS={env['RAY_ADDRESS']}; nodes "
        + ", ".join(f"{r} {n[:12]}" for n, r in role.items()))
    while subprocess.run(["ray", "job", "submit", "--", "true"], env=env, capture_output=True).returncode != 0:
        if time.time() > deadline:
            raise SystemExit("the job server never ran a job")
        time.sleep(2)

    def run(command: str, expect: int = 0) -> str:
        say(f"\n$ {command}")
        t0 = time.time()
        done = subprocess.run(command, shell=True, cwd=REPO, env=env, capture_output=True, text=True)
        out = done.stdout + done.stderr
        # the command's own output, without Ray's notes on packaging the working directory and tailing the job
        noise = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+\s+(INFO|WARNING|SUCC) (packaging|working_dir|dashboard_sdk|sdk|cli|job_manager)\.py")
        kept = [line for line in out.splitlines() if not noise.match(line) and "\x1b[" not in line]
        tail = "\n".join(kept[-30:])
        say(f"{tail}\n[exit {done.returncode} after {time.time() - t0:.0f} s]")
        if done.returncode != expect:
            raise SystemExit(f"expected exit {expect}")
        return out

    small = ("--src-vocab-size 500 --tgt-vocab-size 500 --emb-dim 32 --hidden-size 64 --batch-tokens 1500 --max-steps 60 "
             "--log-every 20 --fp32")
    # section 2: a model
    out = run(f"WORKERS=2 RUN_DIR=s3://my-bucket/s2s-job/runs/eng-fra jobs/submit_train.sh --data s3://my-bucket/pairs.parquet {small}")
    say("training workers ran on: " + ", ".join(f"rank {r} on the {role.get(next((n for n in role if n.startswith(p)), ''), '?')} {p}"
                                               for r, p in sorted(set(re.findall(r"worker (\d+) of \d+ on node (\w+)", out)))))
    run("ray job submit --working-dir . -- s2s-job export s3://my-bucket/s2s-job/runs/eng-fra "
        "--out s3://my-bucket/s2s-job/models/eng-fra --quantize int8 --parity-sentences 20")
    # section 3: one partition by hand, twice, and what it did
    translate = ("MODEL=s3://my-bucket/s2s-job/models/eng-fra jobs/submit_translate.sh 's3://my-bucket/corpus/date={date}/' "
                 "'s3://my-bucket/translations/date={date}/' --date 2026-11-21")
    run(translate)
    with s3.open_input_stream("my-bucket/translations/date=2026-11-21/_run.json") as f:
        say("translate actors ran on: " + ", ".join(f"the {role.get(n, '?')} {n[:12]}" for n in json.loads(f.read())["nodes"]))
    out = run(translate)
    say(f"(second run said 'nothing to do': {'nothing to do' in out})")
    run("s2s-job report s3://my-bucket/translations/date=2026-11-21/")
    # section 4: the nightly line, for yesterday (here: the 2026-11-20 partition)
    run("MODEL=s3://my-bucket/s2s-job/models/eng-fra jobs/submit_translate.sh 's3://my-bucket/corpus/date={date}/' "
        "'s3://my-bucket/translations/date={date}/' --date 2026-11-20")
    run("s2s-job report s3://my-bucket/translations/date=2026-11-20/ s3://my-bucket/translations/date=2026-11-21/")
    say("\nobjects in my-bucket:\n" + "\n".join(sorted(i.path for i in s3.get_file_info(pafs.FileSelector("my-bucket", recursive=True))
                                                        if i.type == pafs.FileType.File)))
finally:
    for p in reversed(started):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                break
            try:
                p.wait(timeout=20)
                break
            except subprocess.TimeoutExpired:
                pass
    say(f"stopped {len(started)} process groups this script started, by id")
