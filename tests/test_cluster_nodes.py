"""The job on local multi-node Ray clusters (ray.cluster_utils.Cluster on loopback), everything on S3.

Data, run directory, model, input and output live on moto's S3 server, so no task, actor or training
worker can lean on a file that exists on one node only. Translate actors spread over three nodes, each
node keeping its I/O reserve; training runs one DDP worker on each of two nodes.
"""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from s2s.run_dir import checkpoint_file


@pytest.fixture
def three_nodes(s3_env):
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in s3_env}
    os.environ.update(s3_env)  # the nodes' raylets, and so every worker, get the S3 settings the standard way
    # marked as ray_cluster.yaml marks them: the head keeps the driver and I/O, the workers take the actors
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False, "resources": {"s2s_head": 1}})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, resources={"s2s_worker": 1})
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()  # kills this cluster's own processes by pid
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def test_translate_spreads_over_the_worker_nodes_never_the_head_with_everything_on_s3(three_nodes, s3_env, tiny_model_dir,
                                                                                          corpus_300):
    s3 = pafs.S3FileSystem(endpoint_override=s3_env["AWS_ENDPOINT_URL"], access_key="testing", secret_key="testing",
                           region="us-east-1", allow_bucket_creation=True)
    s3.create_dir("nodes")
    with s3.open_output_stream("nodes/in/corpus.parquet") as f:
        pq.write_table(pq.read_table(corpus_300), f)
    pafs.copy_files(str(tiny_model_dir), "nodes/model", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=s3)
    env = {**os.environ, **s3_env, "RAY_ADDRESS": three_nodes.address}
    done = subprocess.run([sys.executable, "-m", "s2s.cli", "translate", "s3://nodes/in/", "--output", "s3://nodes/out/",
                           "--model", "s3://nodes/model", "--rows-per-shard", "25", "--max-decoding-length", "30", "--beam-size", "1"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # one actor per worker node to start, each keeping half its CPU for reads and commits
    assert "3 CPUs on 3 node(s); the head takes no actors; 2 translate actor(s) (up to 12 as the cluster scales) x 0.5 CPU" in done.stderr
    with s3.open_input_stream("nodes/out/_run.json") as f:
        run = json.loads(f.read())
    workers = {node.node_id for node in three_nodes.worker_nodes}
    assert run["status"] == "complete" and run["rows"] == 300 and set(run["nodes"]) == workers, (run["nodes"], workers)
    out = pq.read_table("nodes/out", filesystem=s3)
    assert sorted(out.column("keep").to_pylist()) == list(range(300))


def test_train_on_two_nodes_with_its_run_on_s3_resumes_exports_to_s3_and_translates_from_there(s3_env, small_corpus, corpus_300,
                                                                                                 tmp_path):
    """The whole life of a model with nothing on a shared disk: `train --workers 2` on two nodes of 1 CPU (one DDP
    worker each, gloo between them) with data and run dir on S3, `--resume` from Ray Train's checkpoint there,
    `export` from the S3 run to an S3 model directory, and `translate --model s3://...` on the same cluster."""
    import torch
    from ray.cluster_utils import Cluster

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    s3 = pafs.S3FileSystem(endpoint_override=s3_env["AWS_ENDPOINT_URL"], access_key="testing", secret_key="testing",
                           region="us-east-1", allow_bucket_creation=True)
    s3.create_dir("life")
    with s3.open_output_stream("life/pairs.parquet") as f:
        pq.write_table(pq.read_table(small_corpus), f)
    with s3.open_output_stream("life/in/corpus.parquet") as f:
        pq.write_table(pq.read_table(corpus_300).slice(0, 60), f)
    saved = {k: os.environ.get(k) for k in s3_env}
    os.environ.update(s3_env)
    # Ray's default dashboard and agent ports may be taken by another Ray on this machine
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True, "dashboard_port": free_port(),
                                                             "dashboard_agent_listen_port": free_port()})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        env = {**os.environ, "RAY_ADDRESS": cluster.address, "S2S_RUN_CACHE": str(tmp_path / "runs"),
               "S2S_MODEL_CACHE": str(tmp_path / "models")}

        def cli(*args):
            done = subprocess.run([sys.executable, "-m", "s2s.cli", *args], env=env, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
            return done.stdout + done.stderr

        args = ["train", "s3://life/run", "--data", "s3://life/pairs.parquet", "--workers", "2", "--src-vocab-size", "500",
                "--tgt-vocab-size", "500", "--emb-dim", "16", "--hidden-size", "32", "--batch-tokens", "800", "--log-every", "2",
                "--max-minutes", "0", "--fp32"]
        log = cli(*args, "--max-steps", "4")
        assert "on 2 worker(s), CPU/gloo, 1 CPU and 1 thread(s) each" in log
        nodes = dict(re.findall(r"worker (\d) of 2 on node (\w+)", log))
        assert set(nodes) == {"0", "1"} and nodes["0"] != nodes["1"], log[-3000:]  # Ray Train put one worker on each node
        assert log.count("worker 0 of 2 on node") == 1 and "Reporting training result" not in log  # each line once, ours only
        assert re.search(r"^worker 1 of 2 on node", log, re.M)  # relayed from the other node as it is, not forwarded with a pid
        assert torch.load(checkpoint_file("s3://life/run", "last"), weights_only=False)["state"]["step"] == 4
        assert "resumed at epoch 0 batch 4 step 4" in cli(*args, "--max-steps", "8", "--resume")
        assert torch.load(checkpoint_file("s3://life/run", "last"), weights_only=False)["state"]["step"] == 8
        names = {i.path for i in s3.get_file_info(pafs.FileSelector("life/run", recursive=True))}
        assert {"life/run/config.json", "life/run/metrics.jsonl", "life/run/data/train.parquet"} <= names
        assert any(n.endswith("/checkpoint.pt") for n in names) and "life/run/train/checkpoint_manager_snapshot.json" in names

        assert '"bleu"' in cli("evaluate", "s3://life/run", "--checkpoint", "last")  # eval.json goes back beside the run
        assert s3.get_file_info("life/run/eval.json").type == pafs.FileType.File
        cli("export", "s3://life/run", "--output", "s3://life/model", "--parity-sentences", "20", "--no-vmap")
        assert s3.get_file_info("life/model/manifest.json").type == pafs.FileType.File
        cli("translate", "s3://life/in/", "--output", "s3://life/out/", "--model", "s3://life/model", "--rows-per-shard", "30",
            "--max-decoding-length", "20", "--beam-size", "1")
        with s3.open_input_stream("life/out/_run.json") as f:
            assert json.loads(f.read())["status"] == "complete"
        assert pq.read_table("life/out", filesystem=s3).num_rows == 60
    finally:
        cluster.shutdown()
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def test_default_flags_translate_on_the_gpu_nodes_of_a_mixed_cluster(tiny_model_dir, corpus_300, tmp_path):
    """A head, a CPU worker and two GPU workers (declared: Ray schedules by declared resources and gives each
    GPU actor its CUDA_VISIBLE_DEVICES). With default flags every part is translated on a GPU node, by an actor
    Ray gave a GPU, on the CUDA provider with the GPU default variant; the CPU worker gets no actor. The CUDA
    provider is faked from the test side (tests/faults: fake_cuda), since there is no GPU here."""
    from ray.cluster_utils import Cluster

    faults = str(Path(__file__).parent / "faults")
    fault_env = {"PYTHONPATH": os.pathsep.join(p for p in (faults, os.environ.get("PYTHONPATH")) if p), "S2S_TEST_FAULT": "fake_cuda"}
    saved = {k: os.environ.get(k) for k in fault_env}
    os.environ.update(fault_env)  # the raylets, and so every worker, start with the fault
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False, "resources": {"s2s_head": 1}})
    try:
        cpu_node = cluster.add_node(num_cpus=2, resources={"s2s_worker": 1})
        gpu_nodes = [cluster.add_node(num_cpus=2, num_gpus=1, resources={"s2s_worker": 1}) for _ in range(2)]
        cluster.wait_for_nodes()
        out = tmp_path / "out"
        done = subprocess.run([sys.executable, "-m", "s2s.cli", "translate", str(corpus_300), "--output", str(out), "--model",
                               str(tiny_model_dir), "--rows-per-shard", "50", "--max-decoding-length", "20", "--beam-size", "1"],
                              env={**os.environ, "RAY_ADDRESS": cluster.address}, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "7 CPUs, 2 GPUs on 4 node(s); the head takes no actors; 2 translate actor(s)" in done.stderr, done.stderr[-2000:]
        assert "x 1 CPU + 1 GPU" in done.stderr
        run = json.loads((out / "_run.json").read_text())
        assert run["status"] == "complete" and run["rows"] == 300
        engines = run["part_engines"]
        assert len(engines) == 6
        assert {e["node"] for e in engines.values()} <= {n.node_id for n in gpu_nodes} and cpu_node.node_id not in run["nodes"]
        assert all(e["provider"] == "CUDAExecutionProvider" and e["variant"] == "fp16" and e["gpus"] for e in engines.values())
        assert sorted(pq.read_table(out).column("keep").to_pylist()) == list(range(300))
    finally:
        cluster.shutdown()
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
