"""Where the translate actors go: how many, with how many CPUs and GPUs each, and which device each is told.

By default (`--device auto`, no `--gpus-per-actor`) the actors go to GPUs wherever the cluster has GPU
nodes or its autoscaler can add them, and to CPUs otherwise. An actor that asked for no GPU is told
`--device cpu`: Ray hides the GPUs from it, so asking it for CUDA could only fail.
"""

from __future__ import annotations

from dataclasses import dataclass

from s2s.cluster import is_head
from s2s.config import TranslateConfig
from s2s.inputs import JobError

IO_RESERVE = 0.5  # CPUs each node keeps free for the read and commit tasks
IO_TASK_CPUS = 0.25  # what one read or commit task asks for: they mostly wait on storage
# Translate actors per GPU by default, where the node has a CPU for each: the search runs on the host between
# decoder steps, so a second actor's step can run on the GPU meanwhile (as CTranslate2's inter_threads do).
# Not measured on a GPU yet: docs/performance.md.
GPU_ACTORS_PER_GPU = 2
GPU_ACTOR_CPUS = 1.0  # the host side of a GPU actor: the search and the copies


@dataclass(frozen=True)
class Placement:
    actors: int  # the pool's size to start with
    most: int  # the most it may grow to as the cluster scales (== actors: a fixed pool)
    cpus: float  # per actor
    gpus: float  # per actor (0: CPU actors)
    threads: int  # onnxruntime intra-op threads per actor
    device: str  # what each actor's engine is told: "cpu" for CPU actors, the user's auto/cuda for GPU ones


def size_actor_pool(cfg: TranslateConfig, node_cpus: list[float], node_gpus: list[float], gpus: float = 0.0) -> tuple[int, float, int]:
    """(actors, CPUs per actor, onnxruntime threads per actor) for nodes with these CPUs and GPUs.

    An actor pool that takes every CPU starves the read and commit tasks and the job hangs, so each node
    keeps IO_RESERVE CPUs back. By default the rest goes to one-thread actors, one per core: measured on
    2 cores, two 1-thread processes translate 1.4x faster than one process with 2 threads (the search's
    numpy work and small matrices do not split across threads well). Hence 0.75 CPU each on a 2-core node.
    GPU actors (`gpus` each) are as many as the GPUs hold and the node's CPUs, less the reserve, can feed.
    """
    if gpus:
        per_cpu = cfg.cpus_per_actor or GPU_ACTOR_CPUS
        fit = sum(min(int(g / gpus + 1e-9), max(1, int((c - IO_RESERVE) / per_cpu + 1e-9))) for c, g in zip(node_cpus, node_gpus))
        return cfg.actors or max(1, fit), per_cpu, max(1, int(per_cpu + 1e-9))
    largest = max(node_cpus, default=1.0)
    per_cpu = cfg.cpus_per_actor or max(0.25, 1.0 - IO_RESERVE / largest)
    fit = sum(int((c - IO_RESERVE) / per_cpu + 1e-9) for c in node_cpus if c > IO_RESERVE)
    return cfg.actors or max(1, fit), per_cpu, max(1, int(per_cpu + 1e-9) if cfg.cpus_per_actor else 1)


def default_gpu_share(node: dict) -> float:
    """The GPU fraction each actor asks for on a node of this shape: GPU_ACTORS_PER_GPU per GPU where its
    CPUs, less the I/O reserve, give each a GPU_ACTOR_CPUS, else one per GPU."""
    per_gpu = int((node.get("CPU", 0.0) - IO_RESERVE) / GPU_ACTOR_CPUS / node["GPU"] + 1e-9)
    return 1.0 / max(1, min(GPU_ACTORS_PER_GPU, per_gpu))


def place_actors(cfg: TranslateConfig, nodes: list[dict], addable: list[dict], units: int, fixed: bool) -> Placement:
    """The translate pool for a cluster with these alive nodes and node types the autoscaler may add.

    The pool starts sized for the worker nodes alive (the head, where ray_cluster.yaml marks it, takes no
    actors), or for one node the autoscaler can add when none is. Unless `fixed` (a local cluster: no node
    to add) it may grow, while units queue, to what the addable node types can hold: each actor Ray cannot
    place yet is demand the autoscaler answers with a node.
    """
    alive = [n for n in nodes if not is_head(n)]
    types = [n for n in addable if not is_head(n)]
    gpus = cfg.gpus_per_actor
    if cfg.device == "cpu" and gpus:
        raise JobError(f"--device cpu with --gpus-per-actor {gpus:g}: the actors would hold GPUs they never use. Drop one of the two.")
    if gpus is None:  # auto: GPUs where the cluster has or can add them, unless told --device cpu
        with_gpu = [n for n in alive + types if n.get("GPU", 0) > 0]
        gpus = default_gpu_share(with_gpu[0]) if with_gpu and cfg.device != "cpu" else 0.0
    if cfg.device == "cuda" and not gpus:
        raise JobError("--device cuda: " + ("--gpus-per-actor 0 asks Ray for actors without a GPU, and Ray hides the GPUs from them"
                                            if cfg.gpus_per_actor == 0 else
                                            "no node of this cluster has a GPU, and its autoscaler can add none")
                       + ". Use --device auto or cpu, or a cluster with GPU nodes.")
    if gpus:
        alive, types = ([n for n in group if n.get("GPU", 0) >= gpus] for group in (alive, types))
        if not alive and not types:
            raise JobError(f"--gpus-per-actor {gpus:g}: no node of this cluster has that many GPUs, and its autoscaler can add none. "
                           "Lower it, or pass --device cpu.")
    hosts = alive or types[:1]
    actors, cpus, threads = size_actor_pool(cfg, [n.get("CPU", 0.0) for n in hosts], [n.get("GPU", 0.0) for n in hosts], gpus)
    actors = min(actors, units)
    most = actors if fixed or cfg.actors else units
    if most > actors and types:
        most = max(actors, min(most, size_actor_pool(cfg, [n.get("CPU", 0.0) for n in types], [n.get("GPU", 0.0) for n in types], gpus)[0]))
    return Placement(actors, most, cpus, gpus, threads, cfg.device if gpus else "cpu")
