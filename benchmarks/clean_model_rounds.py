"""Benchmark: what the round's gate keeps when a round cannot help.

A well-trained classifier (the demo CNN on digits, trained on the rows a session leaves for
training, as the test suite's; about 98% on test) has few real errors, so its failure regions
hold mostly the generator's ambiguous images. Each region alone is labeled with its true class
and one default round runs from the original weights. A round that cannot help should keep its
starting weights; this prints, per region, whether the round was kept, its test accuracy change
(whole test split), and how many images it lost and gained on the validation half it was not
chosen on. The last line is one JSON object.

Measured (issue 42): every kept round lowered test accuracy while its confirmation half gained no
image; the whole split's count stayed >= 0 through the half the step was chosen on. See
docs/correction.md, "What the gate cannot see".

Run: ``.venv/bin/python benchmarks/clean_model_rounds.py`` (about 5 minutes on a 2-core CPU with
``--steps 40``, the browser test's round).
"""

from __future__ import annotations

import argparse
import json
import warnings

import torch

import defuse_widgets as dw
from defuse_widgets.correction.validation import carve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40, help="steps of each round")
    p.add_argument("--limit", type=int, default=200, help="test images searched")
    p.add_argument("--max-regions", type=int, default=20)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=dw.validation.ValidationWarning)
    data = dw.load_dataset("digits")
    rows = carve(data, 0.1, 0).fit_rows
    clf = dw.train_classifier(data, seed=0, device="cpu", progress=False, rows=rows)
    vae = dw.train_vae(data, seed=0, device="cpu", progress=False)
    s = dw.DefuseSession(clf, vae, data, device="cpu", seed=0, progress=False)
    s.identify(split="test", limit=args.limit)
    regions = s.distill(max_regions=args.max_regions)
    before = s.evaluate().test_accuracy
    print(f"test accuracy {before:.2%}; {len(regions.regions)} regions; {args.steps} steps a round")
    runs = []
    for region in sorted(regions.regions, key=lambda r: -r.size):
        s.revert(round=0)
        for rid in list(s.labels):
            s.unlabel(rid)
        s.label(region.id, region.transition[0])
        record = s.correct(steps=args.steps)
        assert record.evaluation is not None and record.validation is not None
        confirm = record.validation.get("confirm", {}).get("overall_change", {})
        run = {
            "region": region.id,
            "transition": list(region.transition),
            "kept": record.best_step != 0,
            "update": record.settings["update"],
            "test_change": 100 * (record.evaluation.test_accuracy - before),
            "confirm_lost": confirm.get("lost"),
            "confirm_gained": confirm.get("gained"),
            "whole_net": record.validation.get("confirm", {}).get("net"),
        }
        runs.append(run)
        print(f"region {region.id:>2} {region.transition[0]}->{region.transition[1]}: "
              f"{'kept   ' if run['kept'] else 'refused'} test {run['test_change']:+.2f} points, "
              f"confirmation half lost {run['confirm_lost']} gained {run['confirm_gained']}, "
              f"whole split net {run['whole_net']}", flush=True)  # fmt: skip
    kept = [r for r in runs if r["kept"]]
    lower = sum(r["test_change"] < 0 for r in kept)
    print(f"kept {len(kept)} of {len(runs)}; {lower} of them lowered test accuracy")
    print(json.dumps({"test_accuracy": before, "steps": args.steps, "runs": runs}))


if __name__ == "__main__":
    main()
