"""ray_cluster.yaml is a real cluster-launcher config: Ray's own validator accepts it."""

import copy
from pathlib import Path

import pytest
import yaml

CONFIG = Path(__file__).resolve().parent.parent / "ray_cluster.yaml"


def _validate(config: dict) -> None:
    """What `ray up` does before it launches anything: fill in the defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_config_passes_rays_validator():
    config = yaml.safe_load(CONFIG.read_text())
    _validate(config)
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert {"cpu_worker", "gpu_worker"} <= set(types)
    assert all(types[t]["max_workers"] >= types[t]["min_workers"] for t in ("cpu_worker", "gpu_worker"))
    assert sum(types[t]["max_workers"] for t in ("cpu_worker", "gpu_worker")) >= config["max_workers"]
    setup = " ".join(config["setup_commands"])
    assert "pip install" in setup and "-e ." in setup and "models/eng-fra" in setup


def test_the_validator_would_catch_a_broken_config():
    config = yaml.safe_load(CONFIG.read_text())
    broken = copy.deepcopy(config)
    broken["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError):
        _validate(broken)
    missing = copy.deepcopy(config)
    del missing["provider"]
    with pytest.raises(Exception):
        _validate(missing)


@pytest.mark.parametrize("workers,cpus,nodes,use_gpu,expected", [
    (2, 0, [2.0], False, (1.0, 1)),  # this dev machine: two 1-thread workers
    (4, 0, [2.0], False, (0.5, 1)),  # more workers than cores: a fraction of a CPU, one thread
    (16, 0, [16.0] * 4, False, (4.0, 4)),  # a 64-CPU cluster: 4 threads in 4 reserved CPUs (was 4 threads in 1 CPU)
    (1, 0, [16.0, 16.0], False, (16.0, 16)),  # never more than the largest node holds, or Ray cannot place it
    (2, 6, [16.0], False, (3.0, 3)),  # --cpus bounds what the workers share
    (2, 0, [8.0], True, (1.0, 1)),
])
def test_train_threads_follow_each_workers_reservation(workers, cpus, nodes, use_gpu, expected):
    from s2s.train import TrainConfig, worker_cpus

    assert worker_cpus(TrainConfig(workers=workers, cpus=cpus), nodes, use_gpu) == expected
