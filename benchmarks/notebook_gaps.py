"""Benchmark: the four notebooks under nbclient, several times over, and the longest wait between
one cell's reply and the next cell's start (issue 44: a lost wake-up once cost 900 s there).

Runs each notebook of ``notebooks/`` in quick mode (``DEFUSE_WIDGETS_QUICK=1``, as
``tests/test_notebooks.py``) with the tests' runner (``tests/notebook_harness.py``), ``--runs``
times in a row, and prints per run and notebook the seconds it took and its longest gap
(``shell.execute_reply`` of a cell to ``iopub.execute_input`` of the next, the cells' timing
metadata), then one JSON line. ``--stock`` runs stock ``nbclient.NotebookClient`` instead (its
Output-widget stand-in loses wake-ups: gaps as long as ``--cell-timeout``); ``--check S`` exits
with status 1 when a gap exceeds S seconds.

Run: ``nice -n 10 .venv/bin/python benchmarks/notebook_gaps.py --runs 5 --check 10``
(``--notebooks teaching quickstart``; the models are cached under ``--cache``, trained on the
first run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from notebook_harness import KERNEL, NotebookRunner, cell_gaps, write_kernelspec  # noqa: E402

ORDER = ["quickstart", "teaching", "bring_your_own_model", "fashion_mnist"]


def run_once(name: str, stock: bool, cell_timeout: int) -> dict[str, object]:
    """Execute ``notebooks/<name>.ipynb`` once; its time, longest gap and the cell after it."""
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    client_class = NotebookClient if stock else NotebookRunner
    with tempfile.TemporaryDirectory() as work:
        client = client_class(
            nb, kernel_name=KERNEL, timeout=cell_timeout, resources={"metadata": {"path": work}}
        )
        start = time.perf_counter()
        client.execute()
        seconds = time.perf_counter() - start
    gaps = cell_gaps(nb)
    cell, gap = max(gaps, key=lambda g: g[1]) if gaps else (-1, 0.0)
    return {
        "notebook": name,
        "seconds": round(seconds, 1),
        "max_gap_s": round(gap, 2),
        "after_cell": cell,
        "cells": len(gaps) + 1,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--notebooks", nargs="+", default=ORDER, choices=ORDER)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "dw-notebook-gaps"))
    ap.add_argument("--cell-timeout", type=int, default=600, help="seconds a cell may run")
    ap.add_argument("--stock", action="store_true", help="stock nbclient.NotebookClient")
    ap.add_argument("--check", type=float, default=None, help="fail when a gap exceeds this")
    args = ap.parse_args()
    env = write_kernelspec(Path(tempfile.mkdtemp(prefix="dw-kernel-")))
    env.update(
        DEFUSE_WIDGETS_QUICK="1",
        DEFUSE_WIDGETS_CACHE=args.cache,
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS=os.environ.get("DEFUSE_WIDGETS_TEST_THREADS", "1"),
    )
    os.environ.update(env)  # the kernels inherit it
    rows = []
    for run in range(args.runs):
        for name in args.notebooks:
            row = {"run": run, **run_once(name, args.stock, args.cell_timeout)}
            rows.append(row)
            print(
                f"run {run} {name}: {row['seconds']} s, longest gap {row['max_gap_s']} s "
                f"(after code cell {row['after_cell']})",
                flush=True,
            )
    worst = max(float(str(r["max_gap_s"])) for r in rows)
    print(f"longest gap over {args.runs} runs: {worst} s; load average {os.getloadavg()[0]:.1f}")
    print(json.dumps({"stock": args.stock, "runs": rows, "max_gap_s": worst}))
    return 1 if args.check is not None and worst > args.check else 0


if __name__ == "__main__":
    raise SystemExit(main())
