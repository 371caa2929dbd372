"""Benchmark: placing the explorer's faint background (training codes) on the errors' UMAP map.

The explorer fits UMAP on the error codes once (cached) and places up to ``background_limit``
training codes on that map with the fitted model's ``transform`` (``projection.fit``). The
baseline is what the placement avoids: fitting UMAP afresh on errors and background together
(which would also move the errors' map). Synthetic 8-d Gaussian blobs; numba is warmed up first,
so neither side pays for compiling. Prints a table and, last, one JSON line.

Run: ``.venv/bin/python benchmarks/background.py`` (``--sizes 900:1347 10000:5000``).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from defuse_widgets.projection import layout as projection


def blobs(n: int, seed: int, k: int = 20, d: int = 8) -> np.ndarray:
    g = np.random.default_rng(seed)
    centers = np.random.default_rng(0).normal(scale=4.0, size=(k, d))
    return (centers[g.integers(0, k, n)] + g.normal(size=(n, d))).astype(np.float32)


def measure(errors: int, background: int) -> dict[str, float | int]:
    import umap

    codes, extra = blobs(errors, 1), blobs(background, 2)
    t0 = time.perf_counter()
    _, place = projection.fit(codes, "umap", use_cache=False)
    t1 = time.perf_counter()
    place(extra)
    t2 = time.perf_counter()
    umap.UMAP(n_components=2).fit_transform(np.concatenate([codes, extra]))
    t3 = time.perf_counter()
    return {
        "errors": errors,
        "background": background,
        "fit_errors_s": round(t1 - t0, 2),
        "place_s": round(t2 - t1, 2),
        "refit_together_s": round(t3 - t2, 2),
        "speedup": round((t3 - t2) / (t2 - t1), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["900:1347", "10000:5000"], help="errors:codes")
    args = ap.parse_args()
    for warm in (300, 5000):  # numba compiles UMAP's fit and transform paths (exact and NN-descent)
        measure(warm, 300)
    rows = [measure(*(int(v) for v in size.split(":"))) for size in args.sizes]
    cols = list(rows[0])
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    print(f"load average {os.getloadavg()[0]:.1f}; {os.cpu_count()} CPUs")
    print(json.dumps({"benchmark": "background", "rows": rows}))


if __name__ == "__main__":
    main()
