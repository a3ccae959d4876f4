"""The local cluster `train` and `translate` start: workers at normal priority, the cluster-only pollers off."""

import os
import subprocess
import sys

PROBE = """
import os, ray
from s2s.cluster import init_ray
print(init_ray(dashboard=False))
@ray.remote(num_cpus=0)
def worker_env():
    return os.nice(0), os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")
print(*ray.get(worker_env.remote()))
ray.shutdown()
"""


def test_local_cluster_runs_workers_at_nice_0():
    # A fresh process: init_ray must start the cluster itself (Ray's own default puts workers at nice 15,
    # which on 2 cores cost a 1-worker Ray Train run 11-19% of its speed).
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split("\n")
    assert lines[0] == "local cluster"
    assert lines[1] == "0 0"  # niceness 0, preemption watcher off
