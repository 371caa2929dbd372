"""How the error map's projection scales: UMAP fitted on a seeded subsample, the rest placed.

For each size, synthetic codes (a mixture of Gaussian blobs, d=16 like a 28x28 VAE) are projected
with ``projection.project(..., use_cache=False)`` as the explorer does: all codes up to
``FIT_POINTS``, above it a fit on ``FIT_POINTS`` codes and UMAP's ``transform`` for the rest.
The baseline (``--baseline``) fits UMAP on all codes of the same set in the same run. Also
reported: PCA (the explorer's first look), and a disk-cache read (a restarted kernel).
Last line: JSON.

Run: ``.venv/bin/python benchmarks/projection_scale.py --sizes 10000 100000 [--baseline]``
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

os.environ.setdefault("DEFUSE_WIDGETS_PROJECTION_CACHE", tempfile.mkdtemp(prefix="dw-bench-"))
from defuse_widgets.projection import layout as projection  # noqa: E402


def blobs(n: int, d: int = 16, k: int = 20, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    centers = g.normal(scale=4.0, size=(k, d))
    return (centers[g.integers(0, k, n)] + g.normal(size=(n, d))).astype(np.float32)


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--baseline", action="store_true", help="also fit UMAP on all codes")
    args = ap.parse_args()
    projection.project(blobs(500), "umap", use_cache=False)  # numba compiles once, not timed
    rows = []
    for n in args.sizes:
        codes = blobs(n)
        pca_s, _ = timed(projection.project, codes, "pca", use_cache=False)
        umap_s, _ = timed(projection.project, codes, "umap")  # subsample above FIT_POINTS
        projection.clear_cache(disk=False)  # a restarted kernel: the map comes from disk
        disk_s, _ = timed(projection.project, codes, "umap")
        row = {"points": n, "fit_points": min(n, projection.FIT_POINTS), "pca_s": pca_s,
               "umap_s": umap_s, "disk_read_s": disk_s}  # fmt: skip
        if args.baseline and n > projection.FIT_POINTS:
            old, projection.FIT_POINTS = projection.FIT_POINTS, n
            row["umap_all_s"], _ = timed(projection.project, codes, "umap", use_cache=False)
            projection.FIT_POINTS = old
            row["speedup"] = row["umap_all_s"] / umap_s
        rows.append(row)
        print(" | ".join(f"{k} {v:,.2f}" if isinstance(v, float) else f"{k} {v:,}"
                         for k, v in row.items()), flush=True)  # fmt: skip
    print(json.dumps({"benchmark": "projection_scale", "cpus": os.cpu_count(), "rows": rows}))


if __name__ == "__main__":
    main()
