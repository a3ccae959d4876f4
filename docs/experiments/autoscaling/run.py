"""`s2s-job translate` on a local autoscaling Ray cluster whose fake worker nodes come and go with demand.

    python docs/experiments/autoscaling/run.py MODEL_DIR SENTENCES.parquet TEXT_COLUMN WORK_DIR

Ray's `AutoscalingCluster` helper runs `ray stop --force` on start and shutdown, which would kill every
Ray process on the machine (and its template, fake_multi_node/example.yaml, is not in the wheel); so this
script writes the same config itself, starts the head with its own --temp-dir, then stops exactly the
processes whose command line names that folder, by pid.
The head has 1 CPU; the worker type has 2 CPUs, 0 to 2 nodes; they carry ray_cluster.yaml's marks
(`s2s_head`, `s2s_worker`), so the translate actors may run on worker nodes only. As `ray up` does, the
config is left at ~/ray_bootstrap_config.yaml (HOME being a folder of this run), where the job's driver
reads the node types the autoscaler can add. Prints the nodes alive, and the actors on each, every 5 s
during and after the translate run.
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time

# Ray 2.60 turns token authentication on: head and clients share one token, set before Ray is imported
os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))

import psutil  # noqa: E402
from ray.cluster_utils import FAKE_HEAD_NODE_ID  # noqa: E402

model, sentences, column, work = sys.argv[1:5]
os.makedirs(work, exist_ok=True)
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

texts = pq.read_table(sentences, columns=[column]).column(0).to_pylist() * 4  # beam 4: minutes on one actor
source = os.path.join(work, "in.parquet")
pq.write_table(pa.table({"text": texts}), source)
temp_dir = tempfile.mkdtemp(prefix="rayas", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
port = 6379  # Ray's default GCS port: the fake node provider starts its worker nodes against that port
with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Ray's GCS binds: the last run's TIME_WAIT does not count
    s.bind(("0.0.0.0", port))  # fails here, before anything starts, if another Ray cluster holds it

# what ray.cluster_utils.AutoscalingCluster(autoscaler_v2=True) generates from Ray's fake_multi_node/example.yaml
config = {
    "cluster_name": "s2s-fake", "max_workers": 2, "upscaling_speed": 1.0, "idle_timeout_minutes": 0.25,
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                 "disable_launch_config_check": True, "launch_multiple": True, "head_node_id": FAKE_HEAD_NODE_ID},
    "available_node_types": {
        "ray.head.default": {"resources": {"CPU": 1, "s2s_head": 1}, "node_config": {}, "max_workers": 0},
        "cpu_worker": {"resources": {"CPU": 2, "s2s_worker": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2},
    },
    "head_node_type": "ray.head.default", "auth": {}, "docker": {}, "initialization_commands": [], "setup_commands": [],
    "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [],
    "rsync_filter": [],
}
# The fake provider reads its defaults from fake_multi_node/example.yaml, which the Ray 2.60 wheel does not ship
# (the autoscaler monitor dies with FileNotFoundError without it): write it, as it is in Ray's repository.
import ray.autoscaler._private.fake_multi_node as fake  # noqa: E402

example = os.path.join(os.path.dirname(fake.__file__), "example.yaml")
if not os.path.exists(example):
    with open(example, "w") as f:
        json.dump({**config, "max_workers": 8, "available_node_types": {"ray.head.default": {
            "resources": {"CPU": 8, "GPU": 0}, "node_config": {}, "max_workers": 0}}}, f)  # JSON is YAML
home = os.path.join(work, "home")  # the head's home, as `ray up` leaves it
os.makedirs(home, exist_ok=True)
config_path = os.path.join(home, "ray_bootstrap_config.yaml")  # JSON is YAML
with open(config_path, "w") as f:
    json.dump(config, f)
env = {**os.environ, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1", "RAY_enable_autoscaler_v2": "1",
       "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID, "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID}


def ours() -> list[psutil.Process]:
    """This cluster's processes: those naming its temp dir or GCS port, and everything they started."""
    found = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part or part.endswith(f":{port}") for part in p.info["cmdline"] or []):
                for q in [p, *p.children(recursive=True)]:
                    found[q.pid] = q
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return list(found.values())


seen: dict[str, str] = {}  # node id -> head or worker, of every node alive at some point


def nodes() -> str:
    import ray

    alive = [n for n in ray.nodes() if n["Alive"]]
    for n in alive:
        seen[n["NodeID"]] = "head" if n["Resources"].get("s2s_head") else "worker"
    return f"{len(alive)} node(s): " + ", ".join(
        f"{seen[n['NodeID']]} {n['NodeID'][-6:]} {n['Resources'].get('CPU', 0):g} CPU" for n in alive)


try:
    subprocess.check_call(["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", f"--temp-dir={temp_dir}", "--num-cpus=1",
                           f"--autoscaling-config={config_path}", "--include-dashboard=false",
                           '--resources={"s2s_head": 1}'], env=env)
    address = f"127.0.0.1:{port}"
    import ray
    ray.init(address=address, logging_level="ERROR")
    config = ray._private.state.state.get_cluster_config()
    print("cluster config published by the autoscaler:", config and [(g.name, dict(g.resources), g.max_count)
                                                                     for g in config.node_group_configs], flush=True)
    print(time.strftime("%H:%M:%S"), "before:", nodes(), flush=True)
    job = subprocess.Popen([sys.executable, "-m", "s2s.cli", "translate", source, "--model", model,
                            "--output", os.path.join(work, "out"), "--overwrite", "--rows-per-shard", "250"],
                           env={**os.environ, "RAY_ADDRESS": address, "HOME": home}, stdout=open(os.path.join(work, "translate.log"), "w"),
                           stderr=subprocess.STDOUT)
    while job.poll() is None:
        print(time.strftime("%H:%M:%S"), "during:", nodes(), flush=True)
        time.sleep(5)
    print(time.strftime("%H:%M:%S"), "translate exit", job.returncode, flush=True)
    with open(os.path.join(work, "out", "_run.json")) as f:
        parts_on = json.load(f)["nodes"]
    print("parts translated on:", ", ".join(f"{seen.get(n, '?')} {n[-6:]}" for n in parts_on), flush=True)
    for _ in range(12):
        print(time.strftime("%H:%M:%S"), "after:", nodes(), flush=True)
        time.sleep(5)
    ray.shutdown()
finally:
    procs = ours()
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    print(f"stopped {len(procs)} processes of this cluster by pid", flush=True)
