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
    assert "pip install" in setup and "-e ." in setup
    # the head is kept free of actors and training workers by resources Ray's scheduler enforces (s2s/cluster.py)
    from s2s.cluster import HEAD_RESOURCE, WORKER_RESOURCE

    assert types[config["head_node_type"]]["resources"] == {HEAD_RESOURCE: 1}
    assert all(types[t]["resources"] == {WORKER_RESOURCE: 1} for t in ("cpu_worker", "gpu_worker"))


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
    from s2s.config import TrainConfig
    from s2s.train import worker_cpus

    assert worker_cpus(TrainConfig(workers=workers, cpus=cpus), nodes, use_gpu) == expected


def test_training_sees_the_gpu_node_type_the_autoscaler_can_add(ray_2cpus, tmp_path, monkeypatch):
    """On a `ray up` cluster the job's driver runs on the head, where the launcher leaves the cluster config
    with each node type's CPU and GPU filled in: a cluster with no GPU node alive still trains on GPUs."""
    from s2s.cluster import node_shapes
    from s2s.config import TrainConfig
    from s2s.train import use_gpus, worker_cpus

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    alive, addable = node_shapes()
    assert addable == [] and not use_gpus(TrainConfig(), alive)  # no launcher config: the nodes alive decide
    config = yaml.safe_load(CONFIG.read_text())
    filled = {"head": {"CPU": 8}, "cpu_worker": {"CPU": 32}, "gpu_worker": {"CPU": 8, "GPU": 1}}  # what `ray up` detects on AWS
    for name, detected in filled.items():
        config["available_node_types"][name]["resources"].update(detected)
    (tmp_path / "ray_bootstrap_config.yaml").write_text(yaml.safe_dump(config))
    alive, addable = node_shapes()
    assert len(addable) == 12 and sum(n.get("GPU", 0) for n in addable) == 4 and all(n["s2s_worker"] == 1 for n in addable)
    assert use_gpus(TrainConfig(), alive + addable) and not use_gpus(TrainConfig(use_gpu=False), alive + addable)
    # CPU training on that cluster: 16 workers of 2 CPUs each, sized for the worker nodes, not the 2-CPU local node
    assert worker_cpus(TrainConfig(workers=16, cpus=32), [n["CPU"] for n in addable], use_gpu=False) == (2.0, 2)
