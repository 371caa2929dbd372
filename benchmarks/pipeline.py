"""Benchmark the search-to-regions pipeline: today's path against the new one, taking turns.

On the same trained models and the same test images, in one process, each round runs

1. ``today``: ``identify`` with the settings it had before issue 34 (float32, no fused
   upsampling, contiguous weights, decoder calls of 65,536 pixels), then ``fit_regions`` with
   ``method="sklearn"`` (sklearn's ``BayesianGaussianMixture``, 100 components, full covariance,
   ``max_iter=200``);
2. ``new``: ``identify`` with the new defaults (see ``docs/performance.md``), then ``fit_regions``
   with the default ``method="torch"``.

Both mixtures fit the same codes: a seeded 80% of ``today``'s errors, or with ``--fit-images M``
of the errors of one more (untimed) new search of M test images keeping up to ``--fit-k`` per
image (more codes for the mixtures than the timed searches give).

The two take turns ``--rounds`` times (today, new, today, new, ...), so a change in the machine's
load hits both alike; medians are reported. Agreement figures: whether both searches keep the same
errors (and how many differ), and between the two mixtures on the same codes the adjusted Rand
index of the region assignments, the number of regions (weight > 0.01) of each, and the held-out
log-likelihood of each (scored on the other 20% of the codes).

Usage::

    nice -n 19 .venv/bin/python benchmarks/pipeline.py --images 300 --threads 1  # Fashion-MNIST
    nice -n 19 .venv/bin/python benchmarks/pipeline.py --fit-images 2000 --fit-k 20
    nice -n 19 .venv/bin/python benchmarks/pipeline.py --dataset digits --train-images 0 --epochs 0

Models are trained once with the project's trainers (seed 0; by default on a seeded stratified
10,000-image training subset for 5 epochs, so the first run takes minutes, not an hour, on two
shared cores) and cached under ``.cache/bench/pipeline/``. The last line printed is one JSON
object with the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score
from torch import nn

import defuse_widgets as dw

sys.path.insert(0, str(Path(__file__).parent))
from identify import describe_machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench" / "pipeline"
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=["digits", "fashion-mnist"], default="fashion-mnist")
    p.add_argument("--root", default=FASHION_ROOT, help="Fashion-MNIST folder")
    p.add_argument("--images", type=int, default=1000, help="test images searched")
    p.add_argument(
        "--train-images",
        type=int,
        default=10_000,
        help="the models train on a seeded stratified subset of this many (0: all)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=5,
        help="training epochs (0: the trainers' defaults, about 2,000-3,000 steps)",
    )
    p.add_argument("--strategy", default="gaussian", help="search strategy (the default's)")
    p.add_argument("--max-regions", type=int, default=100)
    p.add_argument("--rounds", type=int, default=2, help="today/new alternations")
    p.add_argument(
        "--sklearn-rounds",
        type=int,
        default=1,
        help="run today's sklearn fit in this many rounds only (it is the slow part)",
    )
    p.add_argument(
        "--fit-images",
        type=int,
        default=0,
        help="fit the mixtures to the errors of a new search of this many test images (0: to "
        "today's search's errors)",
    )
    p.add_argument("--fit-k", type=int, default=5, help="max_per_image of that search")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--live",
        action="store_true",
        help="also time the explorer's live search (first errors, quick regions, full "
        "fit) against the blocking search + fit",
    )
    p.add_argument("--only-live", action="store_true", help="time only the live search")
    return p.parse_args(argv)  # fmt: skip


def load_models(data: dw.ImageDataset, epochs: int | None) -> tuple[nn.Module, nn.Module]:
    """The classifier and VAE trained by the project's trainers on ``data``'s training split
    (seed 0, ``epochs`` or the trainers' defaults), or read from the cache. The cache key is the
    data, the epochs and torch's version, not the trainers' code: delete ``CACHE`` after changing
    a trainer."""
    digest = hashlib.sha256(f"{torch.__version__} {epochs}".encode())
    digest.update(data.x_train.numpy().tobytes() + data.y_train.numpy().tobytes())
    folder = CACHE / f"{data.name}-{digest.hexdigest()[:12]}"
    paths = {"classifier": folder / "classifier.safetensors", "vae": folder / "vae.safetensors"}
    if not all(p.is_file() for p in paths.values()):
        folder.mkdir(parents=True, exist_ok=True)
        print(f"training models on {len(data.y_train)} {data.name} images (cached in {folder})",
              file=sys.stderr)  # fmt: skip
        t0, threads = time.perf_counter(), torch.get_num_threads()
        torch.set_num_threads(1)  # small models: on the shared 2-core machine 2 were slower
        dw.save_model(dw.train_classifier(data, epochs, seed=0, device="cpu", progress=False),
                      paths["classifier"])  # fmt: skip
        dw.save_model(dw.train_vae(data, epochs=epochs, seed=0, device="cpu", progress=False),
                      paths["vae"])  # fmt: skip
        torch.set_num_threads(threads)
        print(f"trained in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return dw.load_model(paths["classifier"]).eval(), dw.load_model(paths["vae"]).eval()


def held_out_loglik(regions: dw.RegionSet, codes: torch.Tensor) -> float:
    """Mean log-density per code of ``codes`` (n, d) under the region set's whole mixture."""
    return float(regions.mixture.log_prob_components(codes).logsumexp(1).mean())


def mixture_agreement(
    old: dw.RegionSet, new: dw.RegionSet, old_held: float, new_held: float
) -> dict[str, Any]:
    """ARI of the assignments (errors in no region count as one more cluster), region counts."""
    return {
        "ari": round(adjusted_rand_score(old.assignments.numpy(), new.assignments.numpy()), 4),
        "regions_today": len(old),
        "regions_new": len(new),
        "heldout_loglik_today": round(old_held, 4),
        "heldout_loglik_new": round(new_held, 4),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    limit = args.train_images or None
    if args.dataset == "digits":
        data = dw.load_dataset("digits", train_limit=limit)
    else:
        data = dw.load_dataset("fashion-mnist", root=args.root, train_limit=limit)
    clf, vae = load_models(data, args.epochs or None)
    n = min(args.images, len(data.y_test))
    x, y = data.x_test[:n], data.y_test[:n]
    old_chunk = max(16, 65536 // (x.shape[-1] * x.shape[-2]))  # the CPU default before
    print(describe_machine(torch.device("cpu")))
    print(f"data: {data.name}, {n} test images {tuple(data.image_shape)}, latent size "
          f"{vae.latent_dim}; strategy {args.strategy!r}, seed {args.seed}; mixture "
          f"{args.max_regions} components, full covariance; {args.rounds} rounds "
          "(today, new alternately), median wall time")  # fmt: skip

    def search(new: bool, m: int = n) -> dw.ErrorSet:
        today = {"autocast": None, "chunk_size": old_chunk, "fuse": False, "channels_last": False}
        options: dict[str, Any] = {} if new else today
        return dw.identify(clf, vae, x[:m], y[:m], args.strategy, device="cpu", seed=args.seed,
                           progress=False, **options)  # fmt: skip

    search(True, 8), search(False, 8)  # warm-up (kernels, allocators), not timed
    if args.only_live:
        result = live_timings(clf, vae, data, n, args)
        print(json.dumps(result))
        return result
    times: dict[str, list[float]] = {k: [] for k in ("search_today", "search_new", "fit_today",
                                                     "fit_new")}  # fmt: skip
    found: dict[str, dw.ErrorSet] = {}
    for r in range(args.rounds):
        for path in ("today", "new"):
            t0 = time.perf_counter()
            found[path] = search(path == "new")
            times[f"search_{path}"].append(time.perf_counter() - t0)
            print(f"round {r}: search {path}: {times[f'search_{path}'][-1]:.1f} s, "
                  f"{len(found[path])} errors", flush=True)  # fmt: skip

    # the mixtures: both fit the same codes (a seeded 80%; the other 20% score the held-out
    # likelihood), today's search's errors or, with --fit-images, a larger new search's
    errors = found["today"]
    if args.fit_images:
        m = min(args.fit_images, len(data.y_test))
        errors = dw.identify(clf, vae, data.x_test[:m], data.y_test[:m], args.strategy,
                             device="cpu", seed=args.seed, progress=False,
                             max_per_image=args.fit_k)  # fmt: skip
        print(f"codes for the mixtures: new search of {m} images, k={args.fit_k}: "
              f"{len(errors)} errors", flush=True)  # fmt: skip
    perm = torch.from_numpy(np.random.default_rng(args.seed).permutation(len(errors)))
    cut = int(0.8 * len(errors))
    train, test = errors.subset(perm[:cut].sort().values), errors.codes[perm[cut:]]
    fits: dict[str, dw.RegionSet] = {}
    for r in range(args.rounds):
        for path, method in (("today", "sklearn"), ("new", "torch")):
            if method == "sklearn" and r >= args.sklearn_rounds:
                continue
            t0 = time.perf_counter()
            fits[path] = dw.fit_regions(train, args.max_regions, seed=args.seed, method=method,
                                        device="cpu")  # fmt: skip
            times[f"fit_{path}"].append(time.perf_counter() - t0)
            print(f"round {r}: fit {path} ({method}): {times[f'fit_{path}'][-1]:.1f} s, "
                  f"{len(fits[path])} regions, {fits[path].settings['iterations']} iterations",
                  flush=True)  # fmt: skip
    held = {path: held_out_loglik(fits[path], test) for path in ("today", "new")}
    med = {k: statistics.median(v) for k, v in times.items()}
    old_e, new_e = found["today"], found["new"]
    same = len(old_e) == len(new_e) and bool(
        torch.equal(old_e.source_index, new_e.source_index)
        and torch.allclose(old_e.codes, new_e.codes, atol=1e-4)
    )
    agreement = mixture_agreement(fits["today"], fits["new"], held["today"], held["new"])
    result: dict[str, Any] = {
        "dataset": data.name,
        "images": n,
        "strategy": args.strategy,
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "errors_today": len(old_e),
        "errors_new": len(new_e),
        "same_errors": same,
        "errors_only_today": _only(old_e, new_e),
        "errors_only_new": _only(new_e, old_e),
        "search_today_s": round(med["search_today"], 2),
        "search_new_s": round(med["search_new"], 2),
        "decodes_per_s_today": round(old_e.decodes / med["search_today"]),
        "decodes_per_s_new": round(new_e.decodes / med["search_new"]),
        "fit_today_s": round(med["fit_today"], 2),
        "fit_new_s": round(med["fit_new"], 2),
        "fit_codes": len(train),
        "heldout_codes": len(test),
        **agreement,
    }
    result["search_ratio"] = round(result["decodes_per_s_new"] / result["decodes_per_s_today"], 2)
    result["fit_ratio"] = round(med["fit_today"] / med["fit_new"], 2)
    total_old, total_new = (
        med["search_today"] + med["fit_today"],
        med["search_new"] + med["fit_new"],
    )
    result["pipeline_ratio"] = round(total_old / total_new, 2)
    if args.live:
        result.update(live_timings(clf, vae, data, n, args))
        result["first_regions_ratio"] = round(total_new / result["live_quick_s"], 2)
    print()
    print(f"search: today {med['search_today']:.1f} s ({result['decodes_per_s_today']} decodes/s), "
          f"new {med['search_new']:.1f} s ({result['decodes_per_s_new']} decodes/s): "
          f"{result['search_ratio']}x; same errors: {same}")  # fmt: skip
    print(f"mixture on {len(train)} codes: today (sklearn) {med['fit_today']:.1f} s, new (torch) "
          f"{med['fit_new']:.1f} s: {result['fit_ratio']}x; ARI {agreement['ari']}, regions "
          f"{agreement['regions_today']} / {agreement['regions_new']}, held-out log-likelihood "
          f"{agreement['heldout_loglik_today']} / {agreement['heldout_loglik_new']}")  # fmt: skip
    print(f"search + mixture: today {total_old:.1f} s, new {total_new:.1f} s: "
          f"{result['pipeline_ratio']}x")  # fmt: skip
    print(json.dumps(result))
    return result


def live_timings(
    clf: nn.Module, vae: nn.Module, data: dw.ImageDataset, n: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Seconds from ``s.explorer(search=...)`` to its first errors on the map, to the quick
    regions and to the full fit (the PCA map, so UMAP's compile does not count), and how many
    errors each covered."""
    from defuse_widgets.widgets.explorer import Explorer

    s = dw.DefuseSession(clf, vae, data, device="cpu", seed=args.seed, progress=False)
    marks: dict[str, tuple[float, int]] = {}
    t0 = time.perf_counter()

    def mark(name: str) -> None:
        if name not in marks:
            marks[name] = (time.perf_counter() - t0, 0 if w.points is None else len(w.points))

    w = Explorer(s, search={"limit": n, "limit_order": "first", "strategy": args.strategy},
                 distill={"max_regions": args.max_regions}, projection="pca")  # fmt: skip
    w.observe(lambda c: mark("first") if c["new"] is not None and len(c["new"]) else None,
              "points")  # fmt: skip
    w.observe(lambda c: mark(c["new"]), "regions_fit")
    w.wait()
    print(f"live search of {n} images: first errors on the map after {marks['first'][0]:.1f} s "
          f"({marks['first'][1]} errors), quick regions after {marks['quick'][0]:.1f} s "
          f"({marks['quick'][1]} errors), full fit after {marks['full'][0]:.1f} s "
          f"({len(s.errors)} errors, {len(s.regions)} regions)", flush=True)  # fmt: skip
    w.close()
    return {
        "live_first_s": round(marks["first"][0], 2),
        "live_quick_s": round(marks["quick"][0], 2),
        "live_quick_errors": marks["quick"][1],
        "live_full_s": round(marks["full"][0], 2),
    }


def _only(a: dw.ErrorSet, b: dw.ErrorSet) -> int:
    """How many errors of ``a`` (by source image and code) are not in ``b``."""
    keys = {(int(s), tuple(c)) for s, c in zip(b.source_index, b.codes.round(decimals=4).tolist())}
    return sum((int(s), tuple(c)) not in keys
               for s, c in zip(a.source_index, a.codes.round(decimals=4).tolist()))  # fmt: skip


if __name__ == "__main__":
    main()
