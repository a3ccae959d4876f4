"""Shared fixtures: a tiny real corpus (Tatoeba rows) and a tiny trained run, made once per session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from s2s.data import BUNDLED_DATA

torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """1,500 short real English-French pairs from the bundled data, with their French variants."""
    table = pq.read_table(BUNDLED_DATA)
    en = table.column("en").to_pylist()
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(np.flatnonzero([len(s.split()) <= 6 for s in en]), 1500, replace=False))
    path = tmp_path_factory.mktemp("corpus") / "pairs.parquet"
    pq.write_table(table.take(pa.array(idx)), path)
    return path


@pytest.fixture(scope="session")
def tiny_run(small_corpus, tmp_path_factory) -> Path:
    """A run directory with a small model trained for 30 steps, by `train` on its own local Ray (a subprocess,
    so that the tests' own Ray sessions start clean)."""
    run = tmp_path_factory.mktemp("run") / "tiny"
    settings = dict(run_dir=str(run), data=str(small_corpus), workers=1, batch_tokens=1500, epochs=1, max_steps=30, max_minutes=0,
                    log_every=10, valid_frac=0.1, test_frac=0.1, warmup_steps=10, bf16=False)
    code = ("from s2s.config import ModelConfig, TrainConfig; from s2s.train import train; "
            f"train(TrainConfig(model=ModelConfig(src_vocab_size=500, tgt_vocab_size=500, emb_dim=32, hidden_size=64, dropout=0.0), "
            f"**{settings!r}))")
    subprocess.run([sys.executable, "-c", code], check=True, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    return run


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_run, tmp_path_factory) -> Path:
    """The tiny run exported to ONNX, with an int8 variant."""
    from s2s.config import ExportConfig
    from s2s.export.convert import export_run

    out = tmp_path_factory.mktemp("models") / "tiny"
    export_run(tiny_run, out, ExportConfig(quantize="int8"))
    return out


@pytest.fixture(scope="session")
def corpus_300(tiny_run, tmp_path_factory) -> Path:
    """300 real English rows with a pass-through column and three bad rows (null, blank, 400 words)."""
    texts = []
    for split in ("valid", "test"):
        texts += pq.read_table(tiny_run / "data" / f"{split}.parquet").column("src").to_pylist()
    texts = (texts * 3)[:300]
    texts[5], texts[7], texts[9] = None, "   ", " ".join(["word"] * 400)
    path = tmp_path_factory.mktemp("in") / "corpus.parquet"
    pq.write_table(pa.table({"text": texts, "keep": list(range(300))}), path, row_group_size=64)
    return path


@pytest.fixture(scope="module")
def ray_2cpus():
    """Ray in this process with 2 CPUs, for the tests that run the translate job in-process."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_env():
    """moto's S3 server on a free loopback port, and the standard AWS variables that point at it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("moto's S3 server did not start")
            time.sleep(0.2)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    yield env
    server.terminate()
    server.wait(timeout=30)
