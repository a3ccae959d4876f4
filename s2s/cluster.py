"""Joining Ray: the cluster at RAY_ADDRESS, or a throwaway local one that leaves the cores to the work.

`train` and `translate` both call `init_ray`. On a cluster Ray's own settings apply (ray_cluster.yaml).
A local cluster lives only as long as the command, so it drops what only a long-lived cluster needs;
each setting was measured on the 2-core dev machine (docs/performance.md).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

# Idle Python workers a local cluster keeps. Ray's default is one per CPU; the translate actors take those,
# so every read and commit task started a fresh worker (1.5 CPU-seconds each; 15 of 110 on 100k rows).
LOCAL_WORKERS_SOFT_LIMIT = 16

# Environment for a local cluster, set before ray.init so that Ray's processes inherit it (a variable the
# user already set wins).
LOCAL_ENV = {
    # Ray starts its workers at nice 15 so that a node's Ray daemons stay responsive under load. Where the
    # workers are the job, that gives the raylet, GCS, dashboard, log monitor and the OS first claim on every
    # core: a 1-worker Ray Train run made 0.81-0.89x the tokens/s of the same loop outside Ray, 0.87-0.95x
    # at nice 0 (docs/performance.md).
    "RAY_worker_niceness": "0",
    # Ray Train's background pollers for a long-lived cluster: the spot-preemption watcher and the
    # Prometheus metrics a cluster's monitoring scrapes.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
}


# Custom resources that keep the work off a cluster's head, enforced by Ray's scheduler. ray_cluster.yaml's head
# declares HEAD_RESOURCE and each worker node type WORKER_RESOURCE. Where a head marks itself so, translate
# actors and training workers also ask for a sliver of WORKER_RESOURCE, which no head has: Ray places them on
# worker nodes only, and the autoscaler, seeing that demand, adds one. The driver and the read and commit
# tasks ask for none and stay free to run on the head. A cluster without the marker (one machine, a
# test cluster) uses every node as before.
HEAD_RESOURCE = "s2s_head"
WORKER_RESOURCE = "s2s_worker"
WORKER_SLIVER = 0.001  # per actor or training worker: Ray's resolution is 0.0001, and a node declares 1


def is_head(node: dict) -> bool:
    return node.get(HEAD_RESOURCE, 0) > 0


def work_resources(nodes: list[dict]) -> dict[str, float]:
    """The custom resources an actor or a training worker asks for on a cluster with these (alive) nodes."""
    return {WORKER_RESOURCE: WORKER_SLIVER} if any(is_head(n) for n in nodes) else {}


def init_ray(dashboard: bool) -> str:
    """Connect to RAY_ADDRESS if set, else start a local cluster for this process; return which.

    `dashboard=False` starts the local cluster without Ray's dashboard process, which also serves the state
    API: Ray Data does without it, Ray Train does not (its placement-group cleaner polls that API).
    """
    import ray

    if ray.is_initialized():
        return "already connected"
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return f"cluster at {address}"
    for key, value in LOCAL_ENV.items():
        os.environ.setdefault(key, value)
    # Ray 2.60 turns token authentication on for a new local cluster and says so at WARNING on every run;
    # it stays on, and the note goes (setting RAY_AUTH_MODE here instead comes too late: Ray reads it at import)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    # address="local": a cluster of this process's own, even where another job on this machine runs one (without
    # it Ray joins that one, and refuses this _system_config: "When connecting to an existing cluster ...")
    ray.init(address="local", logging_level=logging.WARNING, include_dashboard=dashboard,
             _system_config={"num_workers_soft_limit": LOCAL_WORKERS_SOFT_LIMIT})
    return "local cluster"


# Where the cluster launcher (`ray up`) leaves the cluster config on the head, with each node type's CPU and GPU
# filled in from its instance type; ray_cluster.yaml starts the head's autoscaler from this same file.
BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")


def addable_from_launcher_config(path: Path) -> list[dict]:
    """Each node the config's autoscaler may add (`max_workers` copies of each worker type's resources)."""
    import yaml

    config = yaml.safe_load(path.read_text()) or {}
    head = config.get("head_node_type")
    return [dict(t.get("resources") or {}) for name, t in (config.get("available_node_types") or {}).items() if name != head
            for _ in range(max(0, int(t.get("max_workers", 0))))]


def node_shapes() -> tuple[list[dict], list[dict]]:
    """The resources of each alive node, and of each node the autoscaler may still add.

    The second list comes from the cluster config an autoscaler publishes in the GCS, which Ray Train and Ray
    Data read the same way (`ray._private.state.state.get_cluster_config()`, private in Ray 2.60; KubeRay's
    autoscaler publishes it, Ray's own does not). Failing that, from the cluster launcher's config on the
    head (BOOTSTRAP_CONFIG), where a job's driver runs. Empty on a local cluster: then only alive nodes count.
    """
    import ray

    alive = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # noqa: BLE001 - a private API: without it, plan for the nodes that exist
        config = None
    addable = []
    for group in config.node_group_configs if config else []:
        resources = dict(group.resources)
        addable += [resources] * max(0, group.max_count)
    launcher = BOOTSTRAP_CONFIG.expanduser()
    if not addable and os.environ.get("RAY_ADDRESS") and launcher.is_file():
        try:
            addable = addable_from_launcher_config(launcher)
        except Exception as e:  # noqa: BLE001 - a config we cannot read must not stop the job: plan for what is alive
            log.warning("%s: cannot read the node types (%s); planning for the nodes alive", launcher, e)
    return alive, addable


def what_failed(error: BaseException) -> str:
    """What failed, in one line. A Ray task's error carries the remote traceback as text: the last exception
    it names that is not one of Ray's own wrappers is the one our code raised."""
    raised = [line for line in str(error).splitlines() if re.match(r"[A-Za-z_][\w.]*: ", line) and not line.startswith("ray.")]
    return raised[-1] if raised else f"{type(error).__name__}: {error}"
