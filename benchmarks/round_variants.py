"""Round variants measured on the planted-bug suite's scenarios (issue 42, part 2).

Builds one planted-bug session the way ``planted_bugs.py`` does (its cached models), runs the
loop up to the round (identify, distill, auto_label, and for ``mislabeled`` the audit), then
trains and judges each variant of a round on the same inputs:

- ``today``: the package's round (``s.correct`` defaults);
- ``full``: every weight fine-tuned on the training rows, region members as groups
  (``--share`` of each batch), optional generated samples (``--generated``), optional keep term;
- ``last``: the last linear layer retrained on frozen features (DFR), same groups;
each followed by the weight interpolation search (largest step in 0.05 steps that passes the
gate on one half of the validation split, confirmed on the other half, Holm over the classes).

Reported per variant: slice accuracy on real test images, test accuracy, the classes harmed on
the test split (paired exact test, Holm at 95%), negative flips, seconds.

``--package JSON ...`` also runs the package's ``run_round`` with those ``RoundSettings``;
``--variants none`` skips the script's own loops; ``--quickstart`` uses the README tour's models
(no planted slice: the regions' exported suite is checked instead).

Usage::

    .venv/bin/python benchmarks/round_variants.py --dataset digits --kind mislabeled --seed 0 \
        --variants last full --keep 0 4
    .venv/bin/python benchmarks/round_variants.py --variants none --package '{"update": "last"}'
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from scipy.stats import binomtest
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import planted_bugs as pb  # noqa: E402

import defuse_widgets as dw  # noqa: E402
from defuse_widgets.correction.round import run_round  # noqa: E402
from defuse_widgets.correction.settings import DEFAULTS, RoundSettings  # noqa: E402
from defuse_widgets.correction.validation import DEFAULT_FRACTION, carve  # noqa: E402
from defuse_widgets.models.inference import predict_labels  # noqa: E402
from defuse_widgets.regions.membership import inside_regions  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="digits", choices=list(pb.CLASS_A))
    p.add_argument(
        "--quickstart",
        action="store_true",
        help="the README tour's models on digits instead of a planted bug",
    )
    p.add_argument("--kind", default="mislabeled", choices=pb.KINDS)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--train-images", type=int, default=None)
    p.add_argument("--search-images", type=int, default=2000)
    p.add_argument("--variants", nargs="+", default=["today", "last", "full"])
    p.add_argument("--share", type=float, nargs="+", default=[0.5])
    p.add_argument("--keep", type=float, nargs="+", default=[0.0, 4.0])
    p.add_argument("--generated", type=float, nargs="+", default=[0.0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument(
        "--package",
        nargs="*",
        default=[],
        metavar="JSON",
        help="also run the package's round (run_round) with these RoundSettings",
    )
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args(argv)


# ---------------------------------------------------------------- the scenario (planted_bugs)


def quickstart(args: argparse.Namespace) -> tuple[dw.DefuseSession, dict[str, Any], Any]:
    """The README tour's session (its quick CNN and reference labeler) after auto_label."""
    data = dw.load_dataset("digits")
    split = carve(data, 0.1, 0)
    clf = pb.cached(
        "classifier",
        "quickstart",
        lambda: dw.train_classifier(
            data, seed=0, rows=split.fit_rows, epochs=12, width=16, device="cpu", progress=False
        ),
    )
    vae = pb.cached(
        "vae", "quickstart", lambda: dw.train_vae(data, seed=0, device="cpu", progress=False)
    )
    reference = pb.cached("reference", "quickstart", lambda: dw.train_classifier(
        data, seed=1, width=64, device="cpu", progress=False))  # fmt: skip
    s = dw.DefuseSession(clf, vae, data, seed=0, device="cpu", progress=False)
    s.identify(split="test")
    regions = s.distill()
    s.label(regions.ids[0], regions.get(regions.ids[0]).transition[0])
    labeler = dw.ReferenceModelLabeler(reference)
    s.auto_label(labeler)
    return s, {}, labeler


def scenario(args: argparse.Namespace) -> tuple[dw.DefuseSession, dict[str, Any], Any]:
    """The planted bug's session after identify, distill, auto_label (and the audit)."""
    if args.quickstart:
        return quickstart(args)
    pa = pb.parse_args(["--datasets", args.dataset, "--search-images", str(args.search_images)]
                       + (["--train-images", str(args.train_images)] if args.train_images
                          else []))  # fmt: skip
    data = pb.load(args.dataset, pa)
    vae, labeler, _ = pb.models_for(args.dataset, data, pa)
    a = pb.CLASS_A[args.dataset][args.kind]
    sl = pb.choose_slice(data, vae, a, pa.clusters, args.seed)
    bug = pb.plant(data, args.kind, sl, args.seed)
    user = bug["data"]
    split = carve(user, DEFAULT_FRACTION, args.seed)
    key = f"{args.dataset}-{args.kind}-{args.seed}-{len(user.y_train)}-{pa.clusters}-{sl['a']}-"
    key += f"{sl['b']}-{pb.ARCH[args.dataset]}-{pb.slice_digest(sl['train'])}"
    epochs = pb.EPOCHS[args.dataset]
    key += f"-e{epochs}"
    clf = pb.cached("classifier", key, lambda: dw.train_classifier(
        user, epochs=epochs, arch=pb.ARCH[args.dataset], rows=split.fit_rows, seed=args.seed,
        device="cpu", progress=False))  # fmt: skip
    validation: Any = DEFAULT_FRACTION
    if args.kind == "spurious":
        vae = pb.train_vae(args.dataset, user, pa, f"spurious-{args.seed}")
        validation = pb.deployment_validation(data, split.rows, args.seed)
        user = dw.ImageDataset(**{**vars(user), "x_train": user.x_train[split.fit_rows],
                                  "y_train": user.y_train[split.fit_rows]})  # fmt: skip
    s = dw.DefuseSession(clf, vae, user, device="cpu", seed=args.seed, progress=False,
                         validation=validation)  # fmt: skip
    s.identify(limit=args.search_images)
    s.distill(max_regions=pa.max_regions)
    s.auto_label(labeler)
    if args.kind == "mislabeled":
        for rid in s.correctable():
            s.confirm_audit(rid, labeler)
    return s, bug, labeler


# ---------------------------------------------------------------- statistics: Holm


def harm_p(lost: int, gained: int) -> float:
    """One-sided exact p-value that a class lost accuracy (McNemar: lost ~ Bin(lost+gained, .5))."""
    if lost + gained == 0 or lost <= gained:
        return 1.0
    return float(binomtest(lost, lost + gained, 0.5, alternative="greater").pvalue)


def holm(pvalues: list[float], alpha: float) -> list[bool]:
    """Which hypotheses Holm's step-down rejects at family-wise level ``alpha``."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    out = [False] * len(pvalues)
    for rank, i in enumerate(order):
        if pvalues[i] > alpha / (len(pvalues) - rank):
            break
        out[i] = True
    return out


def class_harm(before: torch.Tensor, after: torch.Tensor, labels: torch.Tensor, k: int,
               tolerance: float = 1.0, alpha: float = 0.05) -> dict[str, Any]:  # fmt: skip
    """Per class: drop (points), lost, gained, p, Holm-rejected and harmed (rejected and drop >
    tolerance, or on a class of < 41 images a plain drop above tolerance and 1.5 images)."""
    rows = []
    for c in range(k):
        m = labels == c
        n = int(m.sum())
        lost = int((before[m] & ~after[m]).sum())
        gained = int((~before[m] & after[m]).sum())
        rows.append(
            {
                "class": c,
                "n": n,
                "lost": lost,
                "gained": gained,
                "drop": 100.0 * (lost - gained) / max(1, n),
                "p": harm_p(lost, gained),
            }
        )
    rejected = holm([r["p"] for r in rows], alpha)
    harmed = []
    for r, rej in zip(rows, rejected):
        small = 0 < r["n"] < 41 and r["drop"] > max(tolerance, 150.0 / r["n"])
        r["harmed"] = bool((rej and r["drop"] > tolerance) or small)
        if r["harmed"]:
            harmed.append(r["class"])
    lost = int((before & ~after).sum())
    gained = int((~before & after).sum())
    drop = 100.0 * (lost - gained) / len(labels)
    overall = harm_p(lost, gained) <= alpha and drop > 0.5
    return {
        "classes": rows,
        "harmed": harmed,
        "overall_harmed": bool(overall),
        "negative_flips": lost,
        "drop": drop,
    }


# ---------------------------------------------------------------- a round's parts


def last_linear(model: nn.Module) -> nn.Linear:
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ValueError("the classifier has no nn.Linear layer")
    return layers[-1]


@torch.no_grad()
def features(model: nn.Module, head: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """(n, h) inputs of ``head`` for images ``x``, batched."""
    out: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda mod, inp, o: out.append(inp[0].detach()))
    was = model.training
    model.eval()
    try:
        for b in x.split(1024):
            model(b)
    finally:
        hook.remove()
        model.train(was)
    return torch.cat(out)


def group_weights(members: torch.Tensor, share: float) -> torch.Tensor:
    """(n,) draw weights: each labeled region's real members one group (``share`` of the draws
    split equally among the regions with members), the rest of the rows the other share."""
    n, t = members.shape
    w = torch.zeros(n)
    owner = torch.where(members.any(1), members.float().argmax(1), -1)
    groups = [owner == r for r in range(t) if bool((owner == r).any())]
    rest = owner < 0
    if not groups or share <= 0:
        return torch.ones(n) / n
    for g in groups:
        w[g] = share / len(groups) / int(g.sum())
    w[rest] = (1 - share) / max(1, int(rest.sum()))
    return w


def members_of(inputs: Any) -> torch.Tensor:
    ids = list(inputs.targets)
    inside = inside_regions(inputs.regions, inputs.fit_codes, ids)
    labels = torch.tensor([inputs.targets[r] for r in ids], dtype=torch.long)
    carries = inputs.y_fit[:, None] == labels
    members = inside & carries
    if inputs.relabeled is not None:
        members |= inputs.relabeled[:, None] & carries
    return members


def train_last(model: nn.Module, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
               outside: torch.Tensor, keep: float, steps: int, seed: int,
               extra: tuple[torch.Tensor, torch.Tensor] | None = None,
               lam: float = 0.0) -> nn.Module:  # fmt: skip
    """DFR: the last linear layer retrained on frozen features (weighted CE + keep x KL)."""
    head = last_linear(model)
    f = features(model, head, x)
    with torch.no_grad():
        start_logits = head(f)
    new = copy.deepcopy(head)
    opt = torch.optim.Adam(new.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(seed)
    fe = features(model, head, extra[0]) if extra is not None and len(extra[1]) else None
    for _ in range(steps):
        idx = torch.multinomial(w, 512, True, generator=gen)
        logits = new(f[idx])
        loss = F.cross_entropy(logits, y[idx])
        if keep > 0:
            mask = outside[idx].float()
            t = F.softmax(start_logits[idx] / 2, 1)
            kl = F.kl_div(F.log_softmax(logits / 2, 1), t, reduction="none").sum(1)
            loss = loss + keep * 4 * (kl * mask).sum() / mask.sum().clamp_min(1)
        if fe is not None and lam > 0:
            j = torch.randint(len(fe), (256,), generator=gen)
            loss = loss + lam * F.cross_entropy(new(fe[j]), extra[1][j])  # type: ignore[index]
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = copy.deepcopy(model)
    last_linear(out).load_state_dict(new.state_dict())
    return out.eval()


def train_full(model: nn.Module, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
               outside: torch.Tensor, keep: float, steps: int, seed: int,
               extra: tuple[torch.Tensor, torch.Tensor] | None = None, lam: float = 0.0,
               lr: float = 0.003) -> nn.Module:  # fmt: skip
    """Every weight fine-tuned (SGD momentum), weighted draws, keep x KL, optional samples."""
    work = copy.deepcopy(model).train()
    teacher = copy.deepcopy(model).eval()
    opt = torch.optim.SGD(work.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.multinomial(w, 64, True, generator=gen)
        logits = work(x[idx])
        loss = F.cross_entropy(logits, y[idx])
        if keep > 0:
            mask = outside[idx].float()
            with torch.no_grad():
                t = F.softmax(teacher(x[idx]) / 2, 1)
            kl = F.kl_div(F.log_softmax(logits / 2, 1), t, reduction="none").sum(1)
            loss = loss + keep * 4 * (kl * mask).sum() / mask.sum().clamp_min(1)
        if extra is not None and lam > 0 and len(extra[1]):
            j = torch.randint(len(extra[1]), (64,), generator=gen)
            loss = loss + lam * F.cross_entropy(work(extra[0][j]), extra[1][j])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return work.eval()


def blend(start: nn.Module, end: nn.Module, share: float) -> nn.Module:
    out = copy.deepcopy(end).eval()
    with torch.no_grad():
        for mine, first in zip(out.parameters(), start.parameters()):
            mine.lerp_(first.detach(), 1.0 - share)
    return out


def halves(labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two stratified halves (index tensors) of the validation rows."""
    gen = torch.Generator().manual_seed(seed)
    a, b = [], []
    for c in torch.unique(labels).tolist():
        rows = (labels == c).nonzero().flatten()
        rows = rows[torch.randperm(len(rows), generator=gen)]
        a.append(rows[: len(rows) // 2])
        b.append(rows[len(rows) // 2 :])
    return torch.cat(a), torch.cat(b)


def gate(start: nn.Module, end: nn.Module, val: tuple[torch.Tensor, torch.Tensor],
         region_val: torch.Tensor, k: int, seed: int) -> dict[str, Any]:  # fmt: skip
    """The largest share (0.05 steps) passing on the choose half; confirmed on the other."""
    x, y = val
    choose, confirm = halves(y, seed)
    base = predict_labels(start, x) == y
    tried = []
    best = 0.0
    for i in range(20, 0, -1):
        share = i / 20
        right = predict_labels(blend(start, end, share), x) == y
        h = class_harm(base[choose], right[choose], y[choose], k)
        region = float(right[choose][region_val[choose]].float().mean()) if region_val[
            choose].any() else float("nan")  # fmt: skip
        tried.append({"share": share, "harmed": h["harmed"], "region": region})
        if not h["harmed"] and not h["overall_harmed"]:
            best = share
            break
    if best == 0.0:
        return {"share": 0.0, "confirmed": None, "tried": tried}
    right = predict_labels(blend(start, end, best), x) == y
    h = class_harm(base[confirm], right[confirm], y[confirm], k)
    ok = not h["harmed"] and not h["overall_harmed"]
    return {"share": best if ok else 0.0, "chosen": best, "confirmed": ok,
            "confirm_harmed": h["harmed"], "tried": tried}  # fmt: skip


# ---------------------------------------------------------------- measuring


def test_figures(s: dw.DefuseSession, model: nn.Module, start: nn.Module,
                 bug: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    x, y = s.data.x_test, s.data.y_test
    p0, p1 = predict_labels(start, x), predict_labels(model, x)
    h = class_harm(p0 == y, p1 == y, y, s.data.num_classes)
    if not bug:
        return {"suite": suite_figures(s, model), "test": float((p1 == y).float().mean()),
                "test_before": float((p0 == y).float().mean()), "harmed": h["harmed"],
                "negative_flips": h["negative_flips"],
                "drops": [round(r["drop"], 1) for r in h["classes"]]}  # fmt: skip
    return {"slice": float((p1[bug["slice_test"]] == bug["a"]).float().mean()),
            "slice_before": float((p0[bug["slice_test"]] == bug["a"]).float().mean()),
            "test": float((p1 == y).float().mean()), "test_before": float((p0 == y).float().mean()),
            "harmed": h["harmed"], "negative_flips": h["negative_flips"],
            "drops": [round(r["drop"], 1) for r in h["classes"]]}  # fmt: skip


def suite_figures(s: dw.DefuseSession, model: nn.Module) -> dict[str, Any]:
    """The regions' suite (exported once from the starting model's session) run on ``model``:
    passed, and per region the decoded samples' and real images' accuracy."""
    path = Path("/tmp/r2/suite")
    if not path.exists():
        s.export_tests(path)
    result = dw.check_suite(model, path, device="cpu")
    return {"passed": bool(result.passed), "regions": [
        {k: v for k, v in r.items() if k in ("id", "accuracy", "real_accuracy", "passed")}
        for r in result.to_dict()["regions"]]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t = time.perf_counter()
    s, bug, labeler = scenario(args)
    print(f"scenario {args.dataset} {args.kind} seed {args.seed}: "
          f"{time.perf_counter() - t:.0f} s; labeled {s.correctable()}; relabels "
          f"{len(s.relabels)}", flush=True)  # fmt: skip
    start = copy.deepcopy(s.classifier).eval()
    inputs = s._round_inputs(s.correctable(), dw.as_labeler(labeler))
    members = members_of(inputs)
    outside = ~members.any(1)
    x_val, y_val, val_codes = inputs.validation
    region_val = inside_regions(inputs.regions, val_codes, list(inputs.targets)).any(1)
    k = s.data.num_classes
    print(
        f"members per region {members.sum(0).tolist()}; validation inside {int(region_val.sum())}"
    )
    results = []
    if "today" in args.variants:
        t = time.perf_counter()
        res = run_round(inputs, [DEFAULTS])
        model = copy.deepcopy(start)
        model.load_state_dict(res.state)
        results.append(
            {
                "variant": "today",
                "seconds": time.perf_counter() - t,
                "stopped": res.record.stopped,
                **test_figures(s, model, start, bug),
            }
        )
        print(json.dumps(results[-1]), flush=True)
    for text in args.package:
        t = time.perf_counter()
        res = run_round(inputs, [RoundSettings(**json.loads(text))])
        model = copy.deepcopy(start)
        model.load_state_dict(res.state)
        results.append(
            {
                "variant": f"package {text}",
                "seconds": time.perf_counter() - t,
                "stopped": res.record.stopped,
                **test_figures(s, model, start, bug),
            }
        )
        print(json.dumps(results[-1]), flush=True)
    extra = None
    if any(g > 0 for g in args.generated):
        from defuse_widgets.correction.samples import region_batches, validity_floor

        draw = inputs.regions.training_sampler(inputs.targets, {r: 1.0 for r in inputs.targets},
                                               0, inputs.device)  # fmt: skip
        floor = validity_floor(inputs.generator, inputs.fit_codes, 0, inputs.device)
        vet = inputs.labeler.label_images
        xs, ys = zip(*[region_batches(draw, inputs.generator, floor, vet)(256)
                       for _ in range(8)])  # fmt: skip
        extra = (torch.cat(xs), torch.cat(ys))
        print(f"generated kept {len(extra[1])}")
    for variant in [v for v in args.variants if v != "today"]:
        for share in args.share:
            for keep in args.keep:
                for lam in args.generated:
                    t = time.perf_counter()
                    w = group_weights(members, share)
                    train = train_last if variant == "last" else train_full
                    end = train(start, inputs.x_fit, inputs.y_fit, w, outside, keep, args.steps,
                                args.seed, extra, lam)  # fmt: skip
                    g = gate(start, end, (x_val, y_val), region_val, k, args.seed)
                    model = blend(start, end, g["share"])
                    row = {"variant": variant, "share": share, "keep": keep, "lam": lam,
                           "seconds": time.perf_counter() - t, "gate": g,
                           "end": test_figures(s, end, start, bug),
                           **test_figures(s, model, start, bug)}  # fmt: skip
                    results.append(row)
                    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
