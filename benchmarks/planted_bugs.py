"""A suite of planted bugs: does the loop find each one, and does a round fix it without breaking
anything else?

Three kinds of bug, each in one visual slice (a k-means cluster, in the clean VAE's latent space,
of one class A's training images; the cluster nearest another class):

1. ``mislabeled``: the slice's training images carry class B (the class nearest the slice);
2. ``rare``: the slice is kept at 2% of its natural share of the training split;
3. ``spurious``: a small bright patch in the top-left corner of 95% of class A's training images
   and of 5% of the others; in the test split it sits on a random half of all images, whatever
   their class. The slice is A's test images without the patch.

Per dataset, a VAE (on the clean training images; for ``spurious``, on the user's cued
images, as a user's generator would be) and a reference labeler (a wider ``standard``
CNN on the clean labels, longer trained; its test accuracy is printed) are trained once. Per bug
and seed, the classifier (``ARCH``: the demo CNN on digits, ``standard`` on Fashion-MNIST, 4
epochs) is trained on the buggy training split minus the
session's validation rows (so the validation split is really held out). The session sees the
buggy training split (the user's data) and the clean test labels.

The loop: identify (``--strategy``, on the first ``--search-images`` test images) -> distill ->
auto-label every region with the reference labeler -> for ``mislabeled``: ``confirm_audit`` on every
class-labeled region (the labeler decides image by image, on every training image the mixture puts
in the region: ``--audit-coverage``) -> one ``correct()`` round with the defaults (for
``mislabeled``, up to ``--settle`` times: the same labeler decides on the images the round moved
from their label, ``confirm_disputes``, and while it relabels any the round runs again). Reported
per run: found (a region at least 60% of whose errors come from slice test images and that holds at
least 25% of the slice's errors), audit precision/recall of the confirmed relabels against the
planted slice, slice accuracy on real test images, overall test accuracy, the largest drop of any
class (points), and seconds per fine-tuning step.

Also per run (issue 42): ``clean_slice_acc`` and ``clean_test_acc`` (the users' classifier
trained the same way, same seed and held-out rows, on the clean labels and images: the ceiling),
``gap_closed`` = (slice after - before) / (clean - before), ``reach_recall`` and
``reach_precision`` (of the slice's training rows, the share the regions labeled with its class
reach by the session's rule, ``s.reach``, and the share of the reached rows that are slice rows;
``reach`` adds the same for the old ellipsoid and other k), ``harmed_classes`` (classes whose drop
on the whole test split is real: exact paired tests per class, Holm at 95%), ``negative_flips``
(test images right before and wrong after) and ``found_union`` (the regions labeled with the
slice's class hold at least 50% of its errors at 60% purity together).

Targets (issue 42): mislabeled and rare: gap_closed median >= 80% and >= 60% where found,
reach_recall >= 80%, mislabeled audit recall >= 80% at precision >= 95%; no harmed class; test
accuracy never more than 0.5 point below before; found_union in >= 80% of runs. The last line
printed is one JSON object ``{"runs": [...]}``.

``FULL`` (the figures: Fashion-MNIST on 30,000 training images, 5,000 searched) and ``--quick``
(``QUICK``: fewer, for iterating); every accuracy is on the whole test split.

Usage::

    .venv/bin/python benchmarks/planted_bugs.py                                # digits, all kinds
    .venv/bin/python benchmarks/planted_bugs.py --datasets digits fashion-mnist --seeds 0 1 2
    .venv/bin/python benchmarks/planted_bugs.py --datasets fashion-mnist --quick --seeds 0

Models are cached under ``~/.cache/defuse-widgets/bench/suite/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import defuse_widgets as dw
from defuse_widgets.correction import statistics
from defuse_widgets.correction.validation import DEFAULT_FRACTION, carve
from defuse_widgets.models.generative import as_generator
from defuse_widgets.models.inference import predict_labels
from defuse_widgets.regions import membership
from defuse_widgets.search.strategies import DEFAULT_STRATEGY, STRATEGIES
from defuse_widgets.utils.cache import cache_root

CACHE = cache_root() / "bench" / "suite"
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
KINDS = ("mislabeled", "rare", "spurious")
CLASS_A = {  # the class whose slice carries the bug, per kind
    "digits": {"mislabeled": 7, "rare": 9, "spurious": 8},
    "fashion-mnist": {"mislabeled": 4, "rare": 0, "spurious": 6},
}
# None: the trainer's default (~2,000 steps); Fashion-MNIST: 90.8% on clean labels (4 epochs: 88.9%)
EPOCHS = {"digits": None, "fashion-mnist": 10}
ARCH = {"digits": "small", "fashion-mnist": "standard"}  # each reaches its usual accuracy
REFERENCE = {"digits": (64, None), "fashion-mnist": (32, 15)}  # width, epochs
RARE_SHARE, CUE_IN_A, CUE_ELSEWHERE, CUE_IN_TEST = 0.02, 0.95, 0.05, 0.5
FOUND_PURITY, FOUND_COVERAGE = 0.6, 0.25
UNION_COVERAGE = 0.5  # found_union: the A-labeled regions together hold half the slice's errors
HARM_ALPHA = 0.05  # harmed_classes: per-class paired tests on the test split, Holm at 95%
# (training images, searched test images) per dataset; every accuracy on the whole test split
FULL = {"digits": (None, 2000), "fashion-mnist": (30000, 5000)}
QUICK = {"digits": (None, 2000), "fashion-mnist": (8000, 1500)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=["digits"], choices=list(CLASS_A))
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--quick", action="store_true",
                   help="the quick configuration for iterating (QUICK: fewer training and "
                   "searched images; models cached like the full one's)")  # fmt: skip
    p.add_argument("--train-images", type=int, default=None,
                   help="seeded training subset (default: FULL or QUICK)")  # fmt: skip
    p.add_argument("--epochs", type=int, default=None, help="classifier epochs (default: EPOCHS)")
    p.add_argument("--vae-epochs", type=int, default=None, help="VAE epochs (None: ~3k steps)")
    p.add_argument("--search-images", type=int, default=None,
                   help="test images searched (default: FULL or QUICK)")  # fmt: skip
    p.add_argument("--strategy", default=DEFAULT_STRATEGY, choices=list(STRATEGIES))
    p.add_argument("--radius", type=float, default=None, help="gaussian noise radius (its default)")
    p.add_argument("--max-regions", type=int, default=30)
    p.add_argument("--clusters", type=int, default=3, help="k-means clusters within class A")
    p.add_argument("--class-a", nargs="+", default=[], metavar="KIND=CLASS", type=kind_class,
                   help="the class carrying a kind's bug, in every dataset (default: "
                   "CLASS_A)")  # fmt: skip
    p.add_argument(
        "--leak",
        action="store_true",
        help="train the users' classifier on every training row, validation rows "
        "included, to show the leak check fire",
    )
    p.add_argument("--spurious-validation", default="deployment", choices=["train", "deployment"],
                   help="spurious: validation carved from the cued training split, or the same "
                   "rows cued as in deployment (a random half, any class)")  # fmt: skip
    p.add_argument("--correct", default="{}", help="JSON keyword arguments for correct()")
    p.add_argument("--no-vet", dest="vet", action="store_false", help="no vetting by the labeler")
    p.add_argument("--settle", type=int, default=3, metavar="N",
                   help="mislabeled: up to N times, let the audit's labeler decide on the images "
                   "the last round moved from their label (confirm_disputes) and run the round "
                   "again while it confirms any (0: one round, as before)")  # fmt: skip
    p.add_argument("--reference-width", type=int, default=None,
                   help="the reference labeler's CNN width (default: REFERENCE)")  # fmt: skip
    p.add_argument("--audit-coverage", type=float, default=None,
                   help="confirm_audit's ellipsoid gate (default: none, membership only: the "
                   "labeler decides every image, so the gate only costs recall)")  # fmt: skip
    p.add_argument("--audit-confidence", type=float, default=None,
                   help="the labeler's min_confidence in the audit (default: its own, 0.9; "
                   "the vetting of samples keeps it)")  # fmt: skip
    p.add_argument("--labeler-samples", type=int, default=16, help="samples per region labeled")
    p.add_argument("--labeler-agreement", type=float, default=0.7,
                   help="the labeler's min_agreement for a region label")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON line here")
    return p.parse_args(argv)


def kind_class(text: str) -> tuple[str, int]:
    kind, _, cls = text.partition("=")
    if kind not in KINDS or not cls.isdigit():
        raise argparse.ArgumentTypeError(f"expected KIND=CLASS with KIND in {KINDS}, got {text!r}")
    return kind, int(cls)


def cached(name: str, key: str, build: Any) -> torch.nn.Module:
    digest = hashlib.sha256((torch.__version__ + key).encode())
    digest.update((Path(dw.__file__).parent / "models" / "demo.py").read_bytes())
    path = CACHE / f"{name}-{digest.hexdigest()[:12]}.safetensors"
    if path.is_file():
        return dw.load_model(path)
    model = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(f".{os.getpid()}.part")
    dw.save_model(model, part)
    part.replace(path)
    return model


def codes(vae: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    gen = as_generator(vae)
    with torch.inference_mode():
        return torch.cat([gen.encode(b)[0] for b in x.split(2048)]).double()


def choose_slice(
    data: dw.ImageDataset, vae: torch.nn.Module, a: int, clusters: int, seed: int
) -> dict[str, Any]:
    """The k-means cluster of class A's codes nearest another class (B), among clusters holding
    at least 15% of A: its training and test indices."""
    from sklearn.cluster import KMeans

    z_train, z_test = codes(vae, data.x_train), codes(vae, data.x_test)
    in_a = (data.y_train == a).nonzero().flatten()
    km = KMeans(n_clusters=clusters, n_init=10, random_state=seed).fit(z_train[in_a].numpy())
    sizes = np.bincount(km.labels_, minlength=clusters)
    centroids = torch.from_numpy(km.cluster_centers_)
    means = torch.stack([z_train[data.y_train == c].mean(0) for c in range(data.num_classes)])
    dist = torch.cdist(centroids, means)
    dist[:, a] = float("inf")
    dist[~torch.from_numpy(sizes >= 0.15 * len(in_a))] = float("inf")
    cluster = int(dist.min(1).values.argmin())
    test_a = (data.y_test == a).nonzero().flatten()
    in_cluster = torch.from_numpy(km.predict(z_test[test_a].numpy()) == cluster)
    return {
        "a": a,
        "b": int(dist[cluster].argmin()),
        "train": in_a[torch.from_numpy(km.labels_ == cluster)],
        "test": test_a[in_cluster],
    }


def slice_digest(rows: torch.Tensor) -> str:
    """A short digest of the slice's training rows: the slice depends on the VAE it was chosen
    in, and a classifier trained on another slice must not be taken from the cache."""
    return hashlib.sha256(rows.numpy().tobytes()).hexdigest()[:8]


def patch(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A copy of ``x`` with a bright square (a seventh of the side) in the top-left corner."""
    out = x.clone()
    side = max(2, x.shape[-1] // 7)
    out[rows, :, 1 : 1 + side, 1 : 1 + side] = 1.0
    return out


def plant(data: dw.ImageDataset, kind: str, sl: dict[str, Any], seed: int) -> dict[str, Any]:
    """The user's (buggy) dataset, the slice's test indices and the mislabeled training rows."""
    gen = torch.Generator().manual_seed(seed)
    a, b = sl["a"], sl["b"]
    bug: dict[str, Any] = {"a": a, "b": b, "slice_test": sl["test"], "slice_train": None}
    if kind == "mislabeled":
        y = data.y_train.clone()
        y[sl["train"]] = b
        bug["data"] = dataclasses.replace(data, y_train=y)
        bug["slice_train"] = bug["slice_rows"] = sl["train"]
    elif kind == "rare":
        order = sl["train"][torch.randperm(len(sl["train"]), generator=gen)]
        kept = max(1, round(RARE_SHARE * len(order)))
        keep = torch.ones(len(data.y_train), dtype=torch.bool)
        keep[order[kept:]] = False
        bug["data"] = dataclasses.replace(
            data, x_train=data.x_train[keep], y_train=data.y_train[keep]
        )
        bug["slice_rows"] = (keep.cumsum(0) - 1)[order[:kept].sort().values]
    else:
        share = torch.where(data.y_train == a, CUE_IN_A, CUE_ELSEWHERE)
        train_rows = (torch.rand(len(share), generator=gen) < share).nonzero().flatten()
        test_rows = (torch.rand(len(data.y_test), generator=gen) < CUE_IN_TEST).nonzero()
        test_rows = test_rows.flatten()
        x_test = patch(data.x_test, test_rows)
        bug["data"] = dataclasses.replace(
            data, x_train=patch(data.x_train, train_rows), x_test=x_test
        )
        bug["slice_test"] = (data.y_test == a).nonzero().flatten()
        bug["slice_test"] = bug["slice_test"][~torch.isin(bug["slice_test"], test_rows)]
        in_a = (data.y_train == a).nonzero().flatten()
        bug["slice_rows"] = in_a[~torch.isin(in_a, train_rows)]
    return bug


def deployment_validation(
    data: dw.ImageDataset, rows: torch.Tensor, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation rows as they would look when deployed: the cue on a random half of them,
    whatever their class (as in the test split)."""
    gen = torch.Generator().manual_seed(seed + 1)
    cued = (torch.rand(len(rows), generator=gen) < CUE_IN_TEST).nonzero().flatten()
    return patch(data.x_train[rows], cued), data.y_train[rows]


def found(s: dw.DefuseSession, slice_test: torch.Tensor) -> dict[str, Any]:
    """The region that best captures the slice's errors, and whether it counts as found."""
    assert s.errors is not None and s.regions is not None
    from_slice = torch.isin(s.errors.source_index, slice_test)
    total = int(from_slice.sum())
    best = {"id": None, "purity": 0.0, "coverage": 0.0, "label": None}
    for region in s.regions:
        members = s.regions.assignments == region.id
        hits = int((members & from_slice).sum())
        purity, coverage = hits / max(1, int(members.sum())), hits / max(1, total)
        if hits and (purity >= FOUND_PURITY, coverage) > (
            best["purity"] >= FOUND_PURITY,
            best["coverage"],
        ):
            best = {"id": region.id, "purity": purity, "coverage": coverage,
                    "label": s.labels.get(region.id)}  # fmt: skip
    best["found"] = best["purity"] >= FOUND_PURITY and best["coverage"] >= FOUND_COVERAGE
    best["slice_errors"] = total
    best["precision_at_10"] = precision_at_10(s, best["id"], from_slice)
    return best


def found_union(s: dw.DefuseSession, slice_test: torch.Tensor, a: int) -> dict[str, Any]:
    """Whether the regions the labeler gives the slice's class (A) together hold at least
    ``UNION_COVERAGE`` of the slice's errors at ``FOUND_PURITY`` purity."""
    assert s.errors is not None and s.regions is not None
    from_slice = torch.isin(s.errors.source_index, slice_test)
    ids = [rid for rid, label in s.labels.items() if label == a]
    members = torch.isin(s.regions.assignments, torch.tensor(ids, dtype=torch.long))
    hits = int((members & from_slice).sum())
    purity = hits / max(1, int(members.sum()))
    coverage = hits / max(1, int(from_slice.sum()))
    return {"found": purity >= FOUND_PURITY and coverage >= UNION_COVERAGE, "regions": ids,
            "purity": purity, "coverage": coverage}  # fmt: skip


REACH_RULES = {"ellipsoid": None, "latent-5": 5, "latent-10": 10, "latent-25": 25}
"""The reach rules the JSON compares (``reach_rules``): the old ellipsoid, and k nearest."""


def reach_scores(s: dw.DefuseSession, bug: dict[str, Any]) -> dict[str, Any]:
    """Over the regions labeled with the slice's class (A), by the session's rule
    (``s.reach``) and by the rules of ``REACH_RULES``: the share of the slice's training rows
    they reach (``recall``), the share of the rows they reach that are slice rows
    (``precision``), the share of slice rows among the reached rows whose stored label is not A
    (``conflict_precision``: what an audit walks) and the number of rows reached."""
    assert s.regions is not None and s.errors is not None
    ids = [rid for rid, label in s.correctable().items() if label == bug["a"]]
    truth = torch.zeros(len(s.data.y_train), dtype=torch.bool)
    truth[bug["slice_rows"]] = True
    conflict = s.training_labels() != bug["a"]
    z_rows, z_sources = s.split_codes("train"), s.split_codes(s.errors.split)
    out: dict[str, Any] = {"regions": ids, "slice_rows": int(truth.sum())}
    for rule, k in {"chosen": -1, **REACH_RULES}.items():
        if not ids:
            reached = torch.zeros_like(truth)
        elif k == -1:  # the session's rule, as the audit and the rounds use it
            reached = s.reach("train", ids).mask()
        elif k is None:
            reached = membership.inside_regions(s.regions, z_rows, ids).any(1)
        else:
            reached = membership.reach(s.regions, s.errors.source_index, z_sources, z_rows, ids,
                                       k=k).mask()  # fmt: skip
        out[rule] = reach_figures(reached, truth, conflict)
    return {**out.pop("chosen"), **out}


def reach_figures(
    reached: torch.Tensor, truth: torch.Tensor, conflict: torch.Tensor
) -> dict[str, Any]:
    hits, conflicts = int((reached & truth).sum()), reached & conflict
    return {
        "recall": hits / max(1, int(truth.sum())),
        "precision": hits / int(reached.sum()) if reached.any() else None,
        "conflict_precision": int((conflicts & truth).sum()) / int(conflicts.sum())
        if conflicts.any() else None,
        "reached": int(reached.sum()),
    }  # fmt: skip


def precision_at_10(s: dw.DefuseSession, region_id: int | None, from_slice: torch.Tensor) -> float:
    """Domino's measure: the share of the region's 10 most probable member errors that come from
    slice images (0 without a region)."""
    if region_id is None:
        return 0.0
    assert s.errors is not None and s.regions is not None
    prob = s.regions.predict_proba(s.errors.codes)[:, s.regions.column(region_id)]
    top = torch.argsort(-prob, stable=True)[:10]
    return float(from_slice[top].float().mean())


def accuracies(s: dw.DefuseSession, bug: dict[str, Any]) -> dict[str, Any]:
    return scores(s.predict(s.data.x_test).argmax(1), s.data.y_test, bug)


def scores(pred: torch.Tensor, y: torch.Tensor, bug: dict[str, Any]) -> dict[str, Any]:
    """Slice, test and per-class accuracy of the predictions ``pred`` (n,) of the whole test
    split, and ``right`` (n,) bool (for the paired tests; not in the JSON)."""
    per_class = [float((pred[y == c] == c).float().mean()) for c in range(int(y.max()) + 1)]
    return {
        "slice": float((pred[bug["slice_test"]] == bug["a"]).float().mean()),
        "test": float((pred == y).float().mean()),
        "per_class": per_class,
        "right": pred == y,
    }


def harmed_classes(before: torch.Tensor, after: torch.Tensor, y: torch.Tensor) -> list[int]:
    """The classes whose drop on the test split is real: per class, the exact one-sided paired
    test of the images right before and wrong after against the reverse
    (``statistics.drop_pvalue``), the classes' p-values adjusted by Holm (``statistics.holm``)
    and compared with ``HARM_ALPHA``."""
    classes = range(int(y.max()) + 1)
    lost = [int((before & ~after & (y == c)).sum()) for c in classes]
    gained = [int((~before & after & (y == c)).sum()) for c in classes]
    p = [statistics.drop_pvalue(n, m) for n, m in zip(lost, gained)]
    return [c for c, q in zip(classes, statistics.holm(p)) if q <= HARM_ALPHA]


def generator_figures(
    s: dw.DefuseSession, labeler: dw.ReferenceModelLabeler, classes: tuple[int, int]
) -> dict[str, Any]:
    """The generator report's figures for the slice's two classes (A and B), judged by the
    reference labeler on the session's validation images: can the generator draw them?"""
    report = s.generator_report(labeler)
    rows = {c.index: c for c in report.classes}
    return {
        "frechet": report.frechet,
        "classes": {
            rows[c].name: {"real": rows[c].real, "reconstructed": rows[c].reconstructed,
                           "ratio": rows[c].ratio, "looks_like": rows[c].looks_like}
            for c in classes
        },
    }  # fmt: skip


def audit_labeler(
    labeler: dw.ReferenceModelLabeler, min_confidence: float | None
) -> dw.ReferenceModelLabeler:
    """The labeler that decides the audit, image by image: the suite's, or the same model with
    another ``min_confidence``."""
    if min_confidence is None:
        return labeler
    return dw.ReferenceModelLabeler(labeler.model, samples=labeler.samples,
                                    min_agreement=labeler.min_agreement,
                                    min_confidence=min_confidence)  # fmt: skip


def settle_disputes(s: dw.DefuseSession, auditor: dw.ReferenceModelLabeler,
                    truth: torch.Tensor) -> dict[str, Any]:  # fmt: skip
    """Let the auditor decide on the images the last round moved (``confirm_disputes``): how
    many it looked at and relabeled, and how many of each lie in the planted slice."""
    planted = set(truth.tolist())
    out = s.confirm_disputes(auditor)
    return {"candidates": out["candidates"],
            "candidates_in_slice": len(planted & set(out["disputed"])),
            "confirmed": len(out["confirmed"]),
            "confirmed_in_slice": len(planted & set(out["confirmed"])),
            "classes": out["classes"]}  # fmt: skip


def audit_scores(s: dw.DefuseSession, truth: torch.Tensor | None) -> tuple[Any, Any]:
    if truth is None:
        return None, None
    chosen, positives = set(s.relabels), set(truth.tolist())
    hits = len(chosen & positives)
    precision = hits / len(chosen) if chosen else 0.0
    return precision, hits / len(positives) if positives else None


def prepare(args: argparse.Namespace, name: str, data: dw.ImageDataset, kind: str, seed: int,
            vae: torch.nn.Module, labeler: dw.ReferenceModelLabeler) -> dict[str, Any]:  # fmt: skip
    """The user's session on one planted bug, searched, distilled and labeled by ``labeler``:
    ``{"s", "bug", "before", "generator", "region", "t0", "t1"}``."""
    t0 = time.perf_counter()
    a = dict(args.class_a).get(kind, CLASS_A[name][kind])
    sl = choose_slice(data, vae, a, args.clusters, seed)
    bug = plant(data, kind, sl, seed)
    user = bug["data"]
    split = carve(user, DEFAULT_FRACTION, seed)
    fit_rows = split.fit_rows
    key = f"{name}-{kind}-{seed}-{len(user.y_train)}-{args.clusters}-{sl['a']}-{sl['b']}"
    key += f"-{ARCH[name]}-{slice_digest(sl['train'])}"
    epochs = args.epochs or EPOCHS[name]
    key += f"-e{epochs}" + ("-leak" if args.leak else "")
    rows = None if args.leak else fit_rows
    clf = cached("classifier", key, lambda: dw.train_classifier(
        user, epochs=epochs, arch=ARCH[name], rows=rows, seed=seed, device="cpu",
        progress=False))  # fmt: skip
    if kind == "spurious":  # the user's generator learns from the user's (cued) images
        vae = train_vae(name, user, args, f"spurious-{seed}")
    validation: Any = DEFAULT_FRACTION
    if kind == "spurious" and args.spurious_validation == "deployment":
        validation = deployment_validation(data, split.rows, seed)
        user = dataclasses.replace(user, x_train=user.x_train[fit_rows],
                                   y_train=user.y_train[fit_rows])  # fmt: skip
        bug["slice_rows"] = torch.isin(fit_rows, bug["slice_rows"]).nonzero().flatten()
    s = dw.DefuseSession(clf, vae, user, device="cpu", seed=seed, progress=False,
                         validation=validation)  # fmt: skip
    before = accuracies(s, bug)
    generator = generator_figures(s, labeler, (bug["a"], bug["b"]))
    t1 = time.perf_counter()
    options = {"radius": args.radius} if args.radius is not None else {}
    s.identify(strategy=args.strategy, limit=args.search_images, **options)
    s.distill(max_regions=args.max_regions)
    s.auto_label(labeler)
    region = found(s, bug["slice_test"])
    region["union"] = found_union(s, bug["slice_test"], bug["a"])
    clean = scores(predict_labels(clean_model(name, data, args, seed), user.x_test),
                   user.y_test, bug)  # fmt: skip
    return {"s": s, "bug": bug, "before": before, "generator": generator, "region": region,
            "clean": clean, "reach": reach_scores(s, bug), "t0": t0, "t1": t1}  # fmt: skip


def run(args: argparse.Namespace, name: str, data: dw.ImageDataset, kind: str, seed: int,
        vae: torch.nn.Module, labeler: dw.ReferenceModelLabeler) -> dict[str, Any]:  # fmt: skip
    ready = prepare(args, name, data, kind, seed, vae, labeler)
    s, bug, before, region = ready["s"], ready["bug"], ready["before"], ready["region"]
    t0, t1 = ready["t0"], ready["t1"]
    if kind == "mislabeled":
        auditor = audit_labeler(labeler, args.audit_confidence)
        for rid in s.correctable():
            s.confirm_audit(rid, auditor, coverage=args.audit_coverage)
    precision, recall = audit_scores(s, bug["slice_train"])
    t2 = time.perf_counter()
    vetting = {"labeler": labeler} if args.vet else {}
    record = s.correct(**json.loads(args.correct), **vetting) if s.correctable() else None
    settled: list[dict[str, Any]] = []
    while kind == "mislabeled" and record is not None and len(settled) < args.settle:
        settled.append(settle_disputes(s, auditor, bug["slice_train"]))
        settled[-1]["round_before"] = record.stopped
        if not settled[-1]["confirmed"]:
            break
        record = s.correct(**json.loads(args.correct), **vetting)
    precision, recall = audit_scores(s, bug["slice_train"])
    after = accuracies(s, bug) if record is not None else before
    drops = [100 * (b - a) for b, a in zip(before["per_class"], after["per_class"])]
    steps = len(record.losses) if record is not None else 0
    clean, y = ready["clean"], s.data.y_test
    gap = clean["slice"] - before["slice"]
    return {
        "dataset": name, "kind": kind, "seed": seed, "found": bool(region["found"]),
        "found_union": bool(region["union"]["found"]),
        "slice_acc_before": before["slice"], "slice_acc_after": after["slice"],
        "test_acc_before": before["test"], "test_acc_after": after["test"],
        "clean_slice_acc": clean["slice"], "clean_test_acc": clean["test"],
        "gap_closed": (after["slice"] - before["slice"]) / gap if gap > 0 else None,
        "reach_recall": ready["reach"]["recall"], "reach_precision": ready["reach"]["precision"],
        "reach": ready["reach"],
        "harmed_classes": harmed_classes(before["right"], after["right"], y),
        "negative_flips": int((before["right"] & ~after["right"]).sum()),
        "max_class_drop": max(drops), "worst_class": int(np.argmax(drops)), "class_drops": drops,
        "audit_precision": precision, "audit_recall": recall,
        "a": bug["a"], "b": bug["b"], "slice_test": len(bug["slice_test"]),
        "best_region": {k: v for k, v in region.items() if k != "union"},
        "union_regions": region["union"], "relabels": len(s.relabels),
        "labeled_regions": len(s.correctable()), "regions": len(s.regions or []),
        "real_in_labeled_regions": (record.evaluation.labeled_region_real_images
                                    if record is not None and record.evaluation else 0),
        "precision_at_10": region["precision_at_10"],
        "real_images": sum(record.real_images.values()) if record is not None else 0,
        "generated_images": record.generated_images if record is not None else 0,
        "leak": bool(args.leak), "validation_notes": list(s.validation_notes),
        "generator": ready["generator"],
        "stopped": record.stopped if record is not None else "no class-labeled region",
        "best_step": record.best_step if record is not None else None,
        "harm": record.harm if record is not None else [],
        "validation": record.validation if record is not None else None,
        "settled": settled, "rounds": len(s.history),
        "seconds_per_step": (record.seconds / max(1, steps)) if record is not None else None,
        "seconds": {"models": round(t1 - t0, 1), "search_audit": round(t2 - t1, 1),
                    "round": round(time.perf_counter() - t2, 1)},
    }  # fmt: skip


def models_for(
    name: str, data: dw.ImageDataset, args: argparse.Namespace
) -> tuple[torch.nn.Module, Any, float]:
    vae = train_vae(name, data, args)
    width, epochs = REFERENCE[name]
    width = args.reference_width or width
    if args.epochs and epochs:
        epochs = round(1.5 * args.epochs)
    key = f"{name}-{len(data.y_train)}" + ("" if name == "digits" else f"-w{width}-e{epochs}")
    key += f"-w{width}" if name == "digits" and args.reference_width else ""
    reference = cached("reference", key, lambda: dw.train_classifier(
        data, epochs=epochs, width=width, arch="standard", seed=100, device="cpu",
        progress=False))  # fmt: skip
    pred = predict_labels(reference, data.x_test)
    labeler = dw.ReferenceModelLabeler(reference, samples=args.labeler_samples,
                                       min_agreement=args.labeler_agreement)  # fmt: skip
    return vae, labeler, float((pred == data.y_test).float().mean())


def clean_model(name: str, data: dw.ImageDataset, args: argparse.Namespace,
                seed: int) -> torch.nn.Module:  # fmt: skip
    """The users' classifier (same architecture, epochs, seed and held-out validation share)
    trained on the clean labels and images: the ceiling any fix can reach."""
    epochs = args.epochs or EPOCHS[name]
    rows = carve(data, DEFAULT_FRACTION, seed).fit_rows
    key = f"{name}-clean-{len(data.y_train)}-{ARCH[name]}-e{epochs}-s{seed}"
    return cached("classifier", key, lambda: dw.train_classifier(
        data, epochs=epochs, arch=ARCH[name], rows=rows, seed=seed, device="cpu",
        progress=False))  # fmt: skip


def clean_accuracy(name: str, data: dw.ImageDataset, args: argparse.Namespace) -> float:
    """Test accuracy of :func:`clean_model` (seed 0): what the planted bug takes away."""
    pred = predict_labels(clean_model(name, data, args, 0), data.x_test)
    return float((pred == data.y_test).float().mean())


def train_vae(
    name: str, data: dw.ImageDataset, args: argparse.Namespace, variant: str = "clean"
) -> torch.nn.Module:
    key = f"{name}-{len(data.y_train)}" + (f"-e{args.vae_epochs}" if args.vae_epochs else "")
    key += "" if variant == "clean" else f"-{variant}"
    return cached("vae", key, lambda: dw.train_vae(
        data, epochs=args.vae_epochs, seed=0, device="cpu", progress=False))  # fmt: skip


def configured(args: argparse.Namespace, name: str) -> argparse.Namespace:
    """``args`` with the dataset's training and searched image counts (FULL or QUICK) where the
    command line left them out."""
    train_images, search_images = (QUICK if args.quick else FULL)[name]
    out = argparse.Namespace(**vars(args))
    if out.train_images is None:
        out.train_images = train_images
    if out.search_images is None:
        out.search_images = search_images
    return out


def load(name: str, args: argparse.Namespace) -> dw.ImageDataset:
    root = FASHION_ROOT if name == "fashion-mnist" else None
    return dw.load_dataset(name, root=root, train_limit=args.train_images, seed=0)


def summary_line(runs: list[dict[str, Any]]) -> str:
    found_share = sum(r["found"] for r in runs) / len(runs)
    union_share = sum(r["found_union"] for r in runs) / len(runs)
    slice_ok = sum(r["slice_acc_after"] >= 0.85 for r in runs)
    test_ok = sum(r["test_acc_after"] >= r["test_acc_before"] - 0.005 for r in runs)
    class_ok = sum(r["max_class_drop"] <= 2.0 for r in runs)
    unharmed = sum(not r["harmed_classes"] for r in runs)
    gaps = [
        r["gap_closed"] for r in runs if r["kind"] != "spurious" and r["gap_closed"] is not None
    ]
    reach_ok = sum(r["reach_recall"] >= 0.8 for r in runs if r["kind"] != "spurious")
    fixable = sum(r["kind"] != "spurious" for r in runs)
    return (
        f"targets: found {found_share:.0%} of {len(runs)}; found_union {union_share:.0%} (>= 80%); "
        f"gap_closed median {np.median(gaps) if gaps else float('nan'):.0%} (mislabeled, rare; "
        f">= 80%), min {min(gaps, default=float('nan')):.0%}; reach_recall >= 80% in {reach_ok} "
        f"of {fixable}; no harmed class in {unharmed}; test within 0.5 pt in {test_ok}; slice >= "
        f"85% in {slice_ok}; no class down > 2 pt in {class_ok} of {len(runs)} runs"
    )


def print_row(r: dict[str, Any]) -> None:
    audit = "" if r["audit_recall"] is None else (
        f"  audit P {r['audit_precision']:.0%} R {r['audit_recall']:.0%}")  # fmt: skip
    print(
        f"{r['dataset']:<14}{r['kind']:<11}{r['seed']:>4}  {'yes' if r['found'] else 'no':<5}"
        f"{r['slice_acc_before']:>7.1%} -> {r['slice_acc_after']:<7.1%}"
        f"{r['test_acc_before']:>7.2%} -> {r['test_acc_after']:<7.2%}"
        f"{r['max_class_drop']:>+6.1f} (class {r['worst_class']})"
        f"{1000 * (r['seconds_per_step'] or 0):>7.0f} ms{audit}  gap closed "
        f"{'-' if r['gap_closed'] is None else format(r['gap_closed'], '.0%')}, reach R "
        f"{r['reach_recall']:.0%} P {r['reach_precision'] or 0:.0%}, harmed "
        f"{r['harmed_classes']}, flips {r['negative_flips']}, union {r['found_union']}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine {platform.machine()} ({os.cpu_count()} CPUs), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; strategy {args.strategy}; correct() "
          f"{args.correct}")  # fmt: skip
    runs = []
    every = args
    for name in every.datasets:
        args = configured(every, name)
        data = load(name, args)
        for kind, a in args.class_a:
            if a >= data.num_classes:
                raise SystemExit(f"--class-a {kind}={a}: expected a class of {name}, "
                                 f"0-{data.num_classes - 1}")  # fmt: skip
        vae, labeler, ref_acc = models_for(name, data, args)
        print(f"\n{name}: {len(data.y_train)} training / {len(data.y_test)} test images, "
              f"first {min(args.search_images, len(data.y_test))} searched; reference labeler "
              f"test accuracy {ref_acc:.2%}; the users' classifier ({ARCH[name]}) on clean "
              f"labels {clean_accuracy(name, data, args):.2%}")  # fmt: skip
        print(f"{'dataset':<14}{'kind':<11}{'seed':>4}  found  slice acc        test acc"
              f"          max class drop  per step")  # fmt: skip
        for seed in args.seeds:  # seed by seed, so a stopped run still covers every kind
            for kind in args.kinds:
                runs.append(run(args, name, data, kind, seed, vae, labeler))
                print_row(runs[-1])
                print(f"    stopped: {runs[-1]['stopped']}; {runs[-1]['seconds']}",
                      file=sys.stderr)  # fmt: skip
                if args.json:
                    args.json.write_text(json.dumps({"runs": runs}, default=float))
    print(summary_line(runs))
    line = json.dumps({"runs": runs}, default=float)
    if args.json:
        args.json.write_text(line)
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
