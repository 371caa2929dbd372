"""Benchmark: how long one fine-tuning round takes on Fashion-MNIST with 30,000 training images
(issue 42's target: at most 30 s on a 2-core CPU), per ``update`` setting.

A seeded subset of the training split, a classifier and VAE from ``--models`` (a folder with
``classifier.safetensors`` and ``vae.safetensors``, e.g. the Fashion-MNIST notebook's cached
models under ``~/.cache/defuse-widgets/models/``), the first ``--search-images`` test images
searched, the largest region labeled with its true class; then one default round per ``update``
value, each from the original weights. Prints each round's wall time and what it kept.

Run: ``.venv/bin/python benchmarks/round_time.py --models DIR`` (about 4 minutes on a 2-core
CPU; ``--updates last`` for one).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch

import defuse_widgets as dw


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, required=True, help="folder of the two model files")
    p.add_argument("--train-images", type=int, default=30_000)
    p.add_argument("--search-images", type=int, default=1_000)
    p.add_argument("--updates", nargs="+", default=["best", "last", "all"])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=dw.validation.ValidationWarning)
    full = dw.load_dataset("fashion-mnist")
    pick = torch.randperm(len(full.y_train), generator=torch.Generator().manual_seed(0))
    pick = pick[: args.train_images]
    data = dw.from_tensors(full.x_train[pick], full.y_train[pick], full.x_test, full.y_test,
                           full.classes, name=f"fashion-mnist-{len(pick)}")  # fmt: skip
    clf = dw.load_model(args.models / "classifier.safetensors")
    vae = dw.load_model(args.models / "vae.safetensors")
    s = dw.DefuseSession(clf, vae, data, seed=0, progress=False)
    s.identify(split="test", limit=args.search_images)
    regions = s.distill(max_regions=20)
    largest = max(regions.regions, key=lambda r: r.size)
    s.label(largest.id, largest.transition[0])
    for split in ("train", "validation"):  # computed once per session anyway
        s.reach(split)
    s.evaluate()
    print(f"{len(pick):,} training images, {len(s.validation or [])} validation; region "
          f"{largest.id} ({largest.size} errors) labeled {largest.transition[0]}")  # fmt: skip
    for update in args.updates:
        s.revert(round=0)
        start = time.perf_counter()
        record = s.correct(update=update)
        print(f"update={update!r}: {time.perf_counter() - start:.1f} s "
              f"(run_round {record.seconds:.1f} s); {record.stopped}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
