"""Joining Ray: the cluster at RAY_ADDRESS, or a throwaway local one that leaves the cores to the work.

`train` and `translate` both call `init_ray`. On a cluster Ray's own settings apply (ray_cluster.yaml).
A local cluster lives only as long as the command, so it drops what only a long-lived cluster needs;
each setting was measured on the 2-core dev machine (docs/performance.md).
"""

from __future__ import annotations

import logging
import os

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
    ray.init(logging_level=logging.WARNING, include_dashboard=dashboard,
             _system_config={"num_workers_soft_limit": LOCAL_WORKERS_SOFT_LIMIT})
    return "local cluster"


def node_shapes() -> tuple[list[dict], list[dict]]:
    """The resources of each alive node, and of each node the autoscaler may still add (`max_count` copies).

    The second list comes from the cluster config Ray's autoscaler publishes in the GCS; Ray Train and Ray
    Data read it the same way (`ray._private.state.state.get_cluster_config()`, private in Ray 2.60). It is
    empty on a local cluster, or where the autoscaler publishes none: then only alive nodes count.
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
    return alive, addable
