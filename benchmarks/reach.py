"""Reach: which real training rows do the labeled regions point to? Candidate rules measured
against the planted slices of ``planted_bugs.py``.

For each planted bug (the suite's models, data and loop up to ``auto_label``), every candidate
rule gives each region labeled with the slice's class (A) a set of training rows; over their
union it reports ``recall`` (the share of the slice's training rows reached: the mislabeled rows,
the rare slice's few kept rows, the spurious slice's uncued rows) and ``precision`` (the share of
the reached rows that are slice rows), and ``conflict_precision`` (among the reached rows whose
stored label differs from the region's, the share that are slice rows: what an audit walks).

Rules (``k`` nearest in the named space):

- ``ellipsoid``: membership probability >= 0.5 inside the 99% ellipsoid (the old rule);
- ``probability``: membership probability >= 0.5 only;
- ``latent-k`` / ``features-k``: the ``k`` nearest training rows of each member error's source
  image, in the VAE's latent space (encoder means) / the classifier's penultimate features;
- ``vote-latent-k`` / ``vote-features-k``: rows whose ``k`` nearest searched images are, by
  majority, sources of the region's errors.

Usage::

    .venv/bin/python benchmarks/reach.py --datasets digits --seeds 0 1 2
"""

from __future__ import annotations

import json
import sys
from typing import Any

import planted_bugs as pb
import torch

from defuse_widgets.models.generator_report import judge_outputs
from defuse_widgets.regions.membership import inside_regions
from defuse_widgets.search.identify import limit_rows

KS = (5, 10, 25, 50)


def nearest(query: torch.Tensor, pool: torch.Tensor, k: int) -> torch.Tensor:
    """(q, k) indices of the ``k`` nearest rows of ``pool`` to each row of ``query``."""
    out = [torch.cdist(q, pool).topk(min(k, len(pool)), largest=False).indices
           for q in query.split(1024)]  # fmt: skip
    return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)


def source_region(s: Any, searched: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """(len(searched),) the labeled region holding most of each searched image's errors (-1)."""
    errors, regions = s.errors, s.regions
    out = torch.full((len(searched),), -1, dtype=torch.long)
    pos = {int(i): j for j, i in enumerate(searched.tolist())}
    votes: dict[int, dict[int, int]] = {}
    for src, rid in zip(errors.source_index.tolist(), regions.assignments.tolist()):
        votes.setdefault(src, {}).setdefault(rid, 0)
        votes[src][rid] += 1
    for src, tally in votes.items():
        best = max(tally, key=lambda r: (tally[r], -r))
        if best in ids and src in pos:
            out[pos[src]] = best
    return out


def rules(s: Any, targets: list[int], searched: torch.Tensor) -> dict[str, dict[int, Any]]:
    """Rule name -> region id -> (N,) bool training rows reached."""
    regions, errors = s.regions, s.errors
    z_train, z_test = s.split_codes("train").float(), s.split_codes("test").float()
    f_train = judge_outputs(s.classifier, s.data.x_train)[1].float()
    f_test = judge_outputs(s.classifier, s.data.x_test)[1].float()
    n = len(z_train)
    out: dict[str, dict[int, Any]] = {}
    prob = s.region_probability("train")
    out["ellipsoid"] = dict(zip(targets, inside_regions(regions, z_train, targets,
                                                        probability=prob).T))  # fmt: skip
    out["probability"] = dict(zip(targets, inside_regions(regions, z_train, targets, coverage=None,
                                                          probability=prob).T))  # fmt: skip
    owner = source_region(s, searched, targets)
    for space, train, test in (("latent", z_train, z_test), ("features", f_train, f_test)):
        for k in KS:
            fwd, vote = {}, {}
            near = nearest(train, test[searched], k)  # (N, k) positions in searched
            for rid in targets:
                srcs = errors.source_index[regions.assignments == rid].unique()
                mask = torch.zeros(n, dtype=torch.bool)
                if len(srcs):
                    mask[nearest(test[srcs], train, k).flatten()] = True
                fwd[rid] = mask
                vote[rid] = (owner[near] == rid).float().mean(1) > 0.5
            out[f"{space}-{k}"] = fwd
            out[f"vote-{space}-{k}"] = vote
    return out


def score(reached: torch.Tensor, truth: torch.Tensor, conflict: torch.Tensor) -> dict[str, Any]:
    hit = reached & truth
    conf = reached & conflict
    return {
        "recall": float(hit.sum()) / max(1, int(truth.sum())),
        "precision": float(hit.sum()) / max(1, int(reached.sum())),
        "conflict_precision": float((conf & truth).sum()) / max(1, int(conf.sum())),
        "reached": int(reached.sum()),
    }


def measure(args: Any, name: str, data: Any, kind: str, seed: int, vae: Any,
            labeler: Any) -> dict[str, Any]:  # fmt: skip
    ready = pb.prepare(args, name, data, kind, seed, vae, labeler)
    s, bug = ready["s"], ready["bug"]
    a = bug["a"]
    targets = [r for r, lab in s.correctable().items() if lab == a]
    x, y = s.data.split("test")
    searched = limit_rows(torch.arange(len(x)), y, args.search_images, "stratified", seed)
    truth = torch.zeros(len(s.data.y_train), dtype=torch.bool)
    truth[bug["slice_rows"]] = True
    stored = s.training_labels()
    out: dict[str, Any] = {"dataset": name, "kind": kind, "seed": seed, "a": a,
                           "slice_rows": int(truth.sum()), "targets": targets,
                           "found": ready["region"]["found"], "rules": {}}  # fmt: skip
    if not targets:
        return out
    for rule, per_region in rules(s, targets, searched).items():
        union = torch.stack([torch.as_tensor(m) for m in per_region.values()]).any(0)
        out["rules"][rule] = score(union, truth, stored != a)
    return out


def main(argv: list[str] | None = None) -> int:
    args = pb.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for name in args.datasets:
        args = pb.configured(args, name)
        data = pb.load(name, args)
        vae, labeler, _ = pb.models_for(name, data, args)
        for seed in args.seeds:
            for kind in args.kinds:
                r = measure(args, name, data, kind, seed, vae, labeler)
                results.append(r)
                print(f"{name} {kind} seed {seed}: {r['slice_rows']} slice rows, A-labeled "
                      f"regions {r['targets']}, found {r['found']}", flush=True)  # fmt: skip
                for rule, m in r["rules"].items():
                    print(f"  {rule:<20} recall {m['recall']:6.1%}  precision "
                          f"{m['precision']:6.1%}  conflicts {m['conflict_precision']:6.1%}  "
                          f"reached {m['reached']}", flush=True)  # fmt: skip
                if args.json:
                    args.json.write_text(json.dumps({"runs": results}))
    print(json.dumps({"runs": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
