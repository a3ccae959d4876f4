"""The translate job on a Ray cluster of three nodes (ray.cluster_utils.Cluster on loopback), everything on S3.

Input, output and model live on moto's S3 server, so no task or actor can lean on a file that exists on one
node only; the actors spread over the nodes, each node keeping its I/O reserve.
"""

import json
import os
import re
import socket
import subprocess
import sys

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest


@pytest.fixture
def three_nodes(s3_env):
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in s3_env}
    os.environ.update(s3_env)  # the nodes' raylets, and so every worker, get the S3 settings the standard way
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()  # kills this cluster's own processes by pid
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def test_translate_spreads_over_three_nodes_with_everything_on_s3(three_nodes, s3_env, tiny_model_dir, corpus_300):
    s3 = pafs.S3FileSystem(endpoint_override=s3_env["AWS_ENDPOINT_URL"], access_key="testing", secret_key="testing",
                           region="us-east-1", allow_bucket_creation=True)
    s3.create_dir("nodes")
    with s3.open_output_stream("nodes/in/corpus.parquet") as f:
        pq.write_table(pq.read_table(corpus_300), f)
    pafs.copy_files(str(tiny_model_dir), "nodes/model", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=s3)
    env = {**os.environ, **s3_env, "RAY_ADDRESS": three_nodes}
    done = subprocess.run([sys.executable, "-m", "s2s.cli", "translate", "s3://nodes/in/", "--output", "s3://nodes/out/",
                           "--model", "s3://nodes/model", "--rows-per-shard", "25", "--max-decoding-length", "30", "--beam-size", "1"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "3 CPUs on 3 node(s); 3 translate actor(s) (up to 12 as the cluster scales) x 0.5 CPU" in done.stdout  # one per node to start
    with s3.open_input_stream("nodes/out/_run.json") as f:
        run = json.loads(f.read())
    assert run["status"] == "complete" and run["rows"] == 300 and len(run["nodes"]) >= 2, run["nodes"]
    out = pq.read_table("nodes/out", filesystem=s3)
    assert sorted(out.column("keep").to_pylist()) == list(range(300))


def test_train_runs_ddp_with_a_worker_on_each_of_two_nodes_and_resumes(small_corpus, tmp_path):
    """`s2s-job train --workers 2` on a two-node cluster of 1 CPU each: one DDP worker per node (gloo between
    them), then `--resume` continues from the checkpoint. The run dir is a folder both nodes see (one machine)."""
    import torch
    from ray.cluster_utils import Cluster

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    # Ray's default dashboard and agent ports may be taken by another Ray on this machine
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True, "dashboard_port": free_port(),
                                                             "dashboard_agent_listen_port": free_port()})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        run = tmp_path / "run"
        args = ["train", "--run-dir", str(run), "--data", str(small_corpus), "--workers", "2", "--src-vocab-size", "500",
                "--tgt-vocab-size", "500", "--emb-dim", "16", "--hidden-size", "32", "--batch-tokens", "800", "--log-every", "2",
                "--max-minutes", "0", "--fp32"]
        env = {**os.environ, "RAY_ADDRESS": cluster.address}
        first = subprocess.run([sys.executable, "-m", "s2s.cli", *args, "--max-steps", "4"], env=env, capture_output=True,
                               text=True, timeout=600)
        log = first.stdout + first.stderr
        assert first.returncode == 0, log[-3000:]
        assert "on 2 worker(s), CPU/gloo, 1 CPU and 1 thread(s) each" in log
        nodes = dict(re.findall(r"worker (\d) of 2 on node (\w+)", log))
        assert set(nodes) == {"0", "1"} and nodes["0"] != nodes["1"], log[-3000:]  # Ray Train put one worker on each node
        assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["state"]["step"] == 4
        again = subprocess.run([sys.executable, "-m", "s2s.cli", *args, "--max-steps", "8", "--resume"], env=env,
                               capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
        assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["state"]["step"] == 8
    finally:
        cluster.shutdown()
