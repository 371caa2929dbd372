"""Benchmark identify() locally and on Ray: the same search, the same errors, the time it costs.

In one process, on the models and test images of ``benchmarks/identify.py`` (trained once, cached),
it runs the reference search

1. ``local``: ``identify(..., backend="local")`` on the CPU;
2. ``ray_1`` and ``ray_2``: ``backend=RayBackend(actors=1 or 2, cpus_per_actor=0.5)`` on a local
   Ray cluster of 2 CPUs (a pool that takes every CPU hangs: Ray Data's reads need one);
3. ``ray_2nodes``: two actors on a cluster of two raylets (``ray.cluster_utils.Cluster``, one CPU
   each), a multi-node cluster simulated on this machine.

Each Ray run starts its own actor pool (each actor loads the models from the object store), so
its wall time includes that start; ``ray_start_s`` is a one-batch run's time (mostly that fixed
cost), and ``overhead_per_batch_s`` is ``(ray_1_s - local_s) / batches``, Ray's cost per batch
on one actor with the start spread over the batches.
Every run is checked against the local one (sources, labels and decode counts equal, codes bit
for bit). The last line printed is one JSON object with the figures.

Usage::

    .venv/bin/python benchmarks/distributed.py                 # digits, 450 test images
    .venv/bin/python benchmarks/distributed.py --images 200 --batch-size 32 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import defuse_widgets as dw
from defuse_widgets.distributed.backend import RayBackend

sys.path.insert(0, str(Path(__file__).parent))
from identify import describe_machine, load_data, load_models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RAY_INIT = {"include_dashboard": False, "log_to_driver": False}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=["digits", "fashion-mnist"], default="digits")
    p.add_argument("--root", default=None)
    p.add_argument("--images", type=int, default=450)
    p.add_argument("--samples", type=int, default=100, help="Q, draws per image")
    p.add_argument("--k", type=int, default=5, help="errors kept per image at most")
    p.add_argument("--batch-size", type=int, default=64, help="images per Ray batch")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--timeout", type=float, default=300.0, help="most seconds per Ray run")
    p.add_argument("--no-multinode", action="store_true", help="skip the two-raylet cluster")
    # load_models' knobs
    p.add_argument("--train-images", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    return p.parse_args(argv)


def same(a: dw.ErrorSet, b: dw.ErrorSet) -> bool:
    """Sources, labels, codes (bit for bit) and decode counts equal."""
    return (
        len(a) == len(b)
        and a.decodes == b.decodes
        and all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("codes", "source_index",
                                                                      "pred_label"))
    )  # fmt: skip


def timed(fn: Any, repeats: int) -> tuple[float, list[float], Any]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, result


def multinode_cluster() -> Any:
    """Two raylets of one CPU each on this machine, or raise what Ray says."""
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "object_store_memory": 256 << 20, **RAY_INIT}
    node.pop("log_to_driver")
    cluster = Cluster(initialize_head=True, head_node_args=node)
    cluster.add_node(**{k: v for k, v in node.items() if k != "include_dashboard"})
    cluster.wait_for_nodes(timeout=60)
    return cluster


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    # Ray's workers inherit the environment: let them import this checkout's package
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get(
        "PYTHONPATH")]))  # fmt: skip
    import ray

    data = load_data(args)
    clf, vae = load_models(data, args)
    n, q, k = args.images, args.samples, args.k
    x, y = data.x_test[:n], data.y_test[:n]
    strategy = dw.ReferenceSearch(samples=q, max_per_image=k)
    batches = -(-n // args.batch_size)

    def search(backend: Any, images: int = n) -> dw.ErrorSet:
        return dw.identify(clf, vae, x[:images], y[:images], strategy, device="cpu",
                           progress=False, backend=backend)  # fmt: skip

    def on_ray(actors: int) -> RayBackend:
        return RayBackend(actors=actors, cpus_per_actor=0.5, batch_size=args.batch_size,
                          timeout_s=args.timeout)  # fmt: skip

    print(describe_machine(torch.device("cpu")))
    print(f"ray {ray.__version__}; data: {data.name}, {n} test images, latent size "
          f"{vae.latent_dim}; reference search Q={q}, k={k}; Ray batches of {args.batch_size} "
          f"images ({batches} batches), actors of 0.5 CPU; {args.repeats} repeat(s), "
          f"median")  # fmt: skip
    runs: dict[str, tuple[float, list[float], dw.ErrorSet]] = {}
    search("local", images=4)  # warm-up
    runs["local"] = timed(lambda: search("local"), args.repeats)
    ray.init(address="local", num_cpus=2, object_store_memory=512 << 20, **RAY_INIT)
    try:
        start_s = timed(lambda: search(on_ray(1), images=min(n, args.batch_size)), 1)[0]
        for actors in (1, 2):
            runs[f"ray_{actors}"] = timed(lambda a=actors: search(on_ray(a)), args.repeats)
    finally:
        ray.shutdown()
    multinode_note = "skipped (--no-multinode)"
    if not args.no_multinode:
        try:
            cluster = multinode_cluster()
            try:
                ray.init(address=cluster.address, log_to_driver=False)
                runs["ray_2nodes"] = timed(lambda: search(on_ray(2)), args.repeats)
                multinode_note = f"{len(ray.nodes())} raylets of 1 CPU each on this machine"
            finally:
                ray.shutdown()
                cluster.shutdown()
        except Exception as exc:  # report why, keep the other figures
            multinode_note = f"failed: {type(exc).__name__}: {exc}"
    print(f"multi-node: {multinode_note}")

    local_s, _, local = runs["local"]
    print()
    print(f"{'run':<12}{'median s':>10}{'images/s':>10}{'errors':>8}{'decodes':>9}"
          f"{'identical':>11}   runs (s)")  # fmt: skip
    identical = True
    for name, (secs, times, errors) in runs.items():
        ok = same(errors, local)
        identical &= ok
        print(f"{name:<12}{secs:>10.3f}{n / secs:>10.1f}{len(errors):>8}{errors.decodes:>9}"
              f"{str(ok):>11}   {', '.join(f'{t:.3f}' for t in times)}")  # fmt: skip
    ray_1_s, ray_2_s = runs["ray_1"][0], runs["ray_2"][0]
    overhead = (ray_1_s - local_s) / batches
    print(f"\nray, one batch on one actor (pool start and model load included): {start_s:.2f} s; "
          f"Ray's overhead per batch on one actor, (ray_1 - local) / batches: "
          f"{overhead * 1000:.0f} ms")  # fmt: skip
    result = {
        "dataset": data.name,
        "images": n,
        "samples": q,
        "k": k,
        "batch_size": args.batch_size,
        "batches": batches,
        "repeats": args.repeats,
        "ray": ray.__version__,
        "local_s": round(local_s, 3),
        "ray_1_s": round(ray_1_s, 3),
        "ray_2_s": round(ray_2_s, 3),
        "ray_2nodes_s": round(runs["ray_2nodes"][0], 3) if "ray_2nodes" in runs else None,
        "multinode": multinode_note,
        "images_per_s": {name: round(n / r[0], 1) for name, r in runs.items()},
        "ray_start_s": round(start_s, 3),
        "overhead_per_batch_s": round(overhead, 4),
        "errors": len(local),
        "identical": identical,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
