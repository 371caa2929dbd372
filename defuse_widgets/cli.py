"""The ``defuse-widgets`` command: the headless pipeline and its report (``run``), and a
classifier checked against a regression suite (``check``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from defuse_widgets.correction.evaluation import Evaluation
from defuse_widgets.correction.validation import DEFAULT_FRACTION, carve
from defuse_widgets.data import ImageDataset, load_dataset
from defuse_widgets.models.demo import load_model, save_model, train_classifier, train_vae
from defuse_widgets.models.files import load_classifier
from defuse_widgets.projection.layout import project
from defuse_widgets.regions.labels import ReferenceModelLabeler, label_name
from defuse_widgets.search.strategies import DEFAULT_STRATEGY, STRATEGIES
from defuse_widgets.session.session import DefuseSession
from defuse_widgets.suite.check import check_suite
from defuse_widgets.utils.cache import cache_dir as package_cache_dir
from defuse_widgets.utils.jsonio import nan_to_none

# The demo classifier is deliberately quick (narrow, few epochs) so it has real, unplanted bugs;
# the reference labeler is a wider model trained longer, standing in for a person.
DEMO_CLASSIFIER: dict[str, Any] = {"epochs": 12, "width": 16}
REFERENCE_CLASSIFIER: dict[str, Any] = {"width": 64}
AUDITS = ("none", "reference")


def cache_dir() -> Path:
    """The folder of the trained demo models: ``models`` in the package's cache folder
    (:func:`defuse_widgets.utils.cache.cache_dir`)."""
    return package_cache_dir("models")


def demo_models(
    data: ImageDataset, seed: int = 0, device: str = "auto", progress: bool = True
) -> dict[str, torch.nn.Module]:
    """Train (or load cached) the demo classifier, VAE and reference labeler model for ``data``.

    The classifier never sees the validation rows a session with the same ``seed`` carves
    (``validation.DEFAULT_FRACTION``), so rounds are judged on images it was not trained on."""
    folder = cache_dir() / f"{data.name}-seed{seed}-val{DEFAULT_FRACTION:g}"
    folder.mkdir(parents=True, exist_ok=True)
    fit_rows = carve(data, DEFAULT_FRACTION, seed).fit_rows
    builders = {
        "classifier": lambda: train_classifier(
            data, seed=seed, device=device, progress=progress, rows=fit_rows, **DEMO_CLASSIFIER
        ),
        "vae": lambda: train_vae(data, seed=seed, device=device, progress=progress),
        "reference": lambda: train_classifier(
            data, seed=seed + 1, device=device, progress=progress, **REFERENCE_CLASSIFIER
        ),
    }
    models: dict[str, Any] = {}
    for name, build in builders.items():
        path = folder / f"{name}.safetensors"
        if path.is_file():
            models[name] = load_model(path, device=device)
        else:
            models[name] = build()
            save_model(models[name], path)
    return models


def run_pipeline(
    dataset: str,
    out: Path,
    strategy: str = DEFAULT_STRATEGY,
    labeler: str = "reference",
    device: str = "auto",
    seed: int = 0,
    root: str | None = None,
    steps: int = 300,
    max_regions: int = 100,
    progress: bool = True,
    audit: str = "none",
    auto: bool = True,
) -> dict[str, Any]:
    """identify -> distill -> auto-label -> [audit] -> correct; save the session and the report in
    ``out``. ``audit="reference"`` lets the reference labeler confirm, image by image, the training
    images inside each class-labeled region whose label conflicts with the region's; correction then
    trains on those relabels too. ``auto``: the round tries ``correct(auto=True)``'s small grid of
    settings and keeps the best on validation (a headless run has no person to retry it)."""
    if labeler != "reference":
        raise ValueError(f"labeler: only 'reference' is available headless, got {labeler!r}")
    if audit not in AUDITS:
        raise ValueError(f"audit: expected one of {AUDITS}, got {audit!r}")
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    data = load_dataset(dataset, root=root)
    models = demo_models(data, seed, device, progress)
    lap("models")
    # the validation rows demo_models kept the classifier away from (same fraction, same seed)
    s = DefuseSession(
        models["classifier"],
        models["vae"],
        data,
        device=device,
        seed=seed,
        progress=progress,
        validation=DEFAULT_FRACTION,
    )
    s.identify(strategy=strategy, split="test")
    lap("identify")
    s.distill(max_regions=max_regions)
    lap("distill")
    reference = ReferenceModelLabeler(models["reference"])
    print_generator_report(s, reference, out)
    s.auto_label(reference)
    lap("label")
    per_region: dict[str, int] = {}
    if audit == "reference":
        for rid in sorted(s.correctable()):
            per_region[str(rid)] = len(s.confirm_audit(rid, reference)["confirmed"])
        lap("audit")
    before = s.evaluate()
    lap("evaluate_before")
    record = s.correct(steps=steps, auto=auto, labeler=reference) if s.correctable() else None
    after = before if record is None or record.evaluation is None else record.evaluation
    lap("correct")
    s.save(out / "session")
    report = build_report(s, dataset, strategy, before, after, timings)
    report["relabels"] = {"audit": audit, "count": len(s.relabels), "per_region": per_region}
    write_html_report(s, report, out / "report.html")
    lap("save_and_report")
    timings["total"] = round(sum(timings.values()), 3)  # report["timings"] is this dict
    (out / "report.json").write_text(json.dumps(nan_to_none(report), indent=2))
    return report


def print_generator_report(s: DefuseSession, labeler: ReferenceModelLabeler, out: Path) -> None:
    """Print whether the generator can draw each class (the reference labeler judging its
    reconstructions of the validation images) and write the figures to ``out/generator.json``."""
    report = s.generator_report(labeler)
    print(report.table())
    out.mkdir(parents=True, exist_ok=True)
    (out / "generator.json").write_text(json.dumps(nan_to_none(report.to_dict()), indent=2))


def build_report(
    s: DefuseSession,
    dataset: str,
    strategy: str,
    before: Evaluation,
    after: Evaluation,
    timings: dict[str, float],
) -> dict[str, Any]:
    assert s.errors is not None and s.regions is not None
    rows = []
    for region in s.regions:
        label = s.labels.get(region.id)
        b, a = before.regions.get(region.id), after.regions.get(region.id)
        rows.append(
            {
                "id": region.id,
                "size": region.size,
                "weight": region.weight,
                "transition": list(region.transition),
                "label": label,
                "label_name": None if label is None else label_name(label, s.data.classes),
                "accuracy_before": b and b.sample_accuracy,
                "accuracy_after": a and a.sample_accuracy,
                "real_images": b and b.real_images,
                "real_accuracy_before": b and b.real_accuracy,
                "real_accuracy_after": a and a.real_accuracy,
            }
        )
    return {
        "dataset": dataset,
        "device": str(s.device),
        "seed": s.seed,
        "strategy": strategy,
        "test_accuracy_before": before.test_accuracy,
        "test_accuracy_after": after.test_accuracy,
        "images_searched": s.errors.images_searched,
        "decodes": s.errors.decodes,
        "errors_found": len(s.errors),
        "regions": rows,
        "labeled_regions": len(s.correctable()),
        "labeled_region_accuracy_before": before.labeled_region_accuracy,
        "labeled_region_accuracy_after": after.labeled_region_accuracy,
        "labeled_region_real_accuracy_before": before.labeled_region_real_accuracy,
        "labeled_region_real_accuracy_after": after.labeled_region_real_accuracy,
        "labeled_region_real_images": before.labeled_region_real_images,
        "timings": timings,
    }


def write_html_report(s: DefuseSession, report: dict[str, Any], path: Path) -> None:
    """A self-contained HTML page: errors by region (PCA 2-D), region samples, before/after."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    assert s.errors is not None and s.regions is not None
    xy = project(s.errors.codes, method="pca", use_cache=False)
    scatter = go.Figure(
        go.Scattergl(
            x=xy[:, 0],
            y=xy[:, 1],
            mode="markers",
            marker={"color": s.regions.assignments.numpy(), "colorscale": "Turbo", "size": 5},
            text=[
                f"region {r}: {t} -> {p}"
                for r, t, p in zip(
                    s.regions.assignments.tolist(),
                    s.errors.true_label.tolist(),
                    s.errors.pred_label.tolist(),
                )
            ],
        )
    )
    scatter.update_layout(title="Errors by region (PCA of latent codes)", height=450)
    shown = [r for r in s.regions if r.id in s.labels][:6] or list(s.regions)[:6]
    grid = make_subplots(
        rows=len(shown) or 1,
        cols=8,
        horizontal_spacing=0.005,
        vertical_spacing=0.02,
        row_titles=[f"region {r.id}" for r in shown],
    )
    for row, region in enumerate(shown, start=1):
        sample = s.regions.sample(region.id, 8, purpose="eval")
        for col in range(8):
            img = sample.images[col].mean(0).flip(0).numpy()
            grid.add_trace(go.Heatmap(z=img, colorscale="gray", showscale=False), row, col + 1)
    grid.update_xaxes(visible=False).update_yaxes(visible=False)
    grid.update_layout(title="Region samples", height=120 * max(1, len(shown)) + 80)
    keys = ["test_accuracy", "labeled_region_accuracy", "labeled_region_real_accuracy"]
    table = go.Figure(
        go.Table(
            header={"values": ["metric", "before", "after"]},
            cells={
                "values": [
                    keys,
                    [_fmt(report[f"{k}_before"]) for k in keys],
                    [_fmt(report[f"{k}_after"]) for k in keys],
                ]
            },
        )
    )
    table.update_layout(title="Before and after correction", height=260)
    parts = [
        fig.to_html(full_html=False, include_plotlyjs="cdn" if i else True)
        for i, fig in enumerate([table, scatter, grid])
    ]
    path.write_text(render_report(report["dataset"], parts), encoding="utf-8")


def render_report(dataset: str, figures: Sequence[str]) -> str:
    """The report page from ``templates/report.html``: ``dataset`` escaped, ``figures`` (HTML
    that plotly wrote) as they are."""
    from jinja2 import Environment, PackageLoader
    from markupsafe import Markup

    env = Environment(
        loader=PackageLoader("defuse_widgets", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    page = env.get_template("report.html")
    return page.render(dataset=dataset, figures=[Markup(f) for f in figures])


def _fmt(value: Any) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (``check``: 0 pass, 1 a region failed, 2 bad
    input)."""
    parser = argparse.ArgumentParser(prog="defuse-widgets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_check(sub)
    args = parser.parse_args(argv)
    if args.command == "check":
        return run_check(args)
    report = run_pipeline(
        args.dataset,
        args.out,
        args.strategy,
        args.labeler,
        args.device,
        args.seed,
        args.root,
        args.steps,
        args.max_regions,
        not args.quiet,
        audit=args.audit,
        auto=not args.no_auto,
    )
    keys = (
        "test_accuracy_before",
        "test_accuracy_after",
        "errors_found",
        "labeled_regions",
        "labeled_region_accuracy_before",
        "labeled_region_accuracy_after",
        "labeled_region_real_accuracy_before",
        "labeled_region_real_accuracy_after",
    )
    for key in keys:
        print(f"{key}: {report[key]}")
    print(f"relabels: {report['relabels']['count']} {report['relabels']['per_region']}")
    print(f"timings: {report['timings']}")
    print(f"report: {args.out / 'report.html'}")
    return 0


def _add_run(sub: Any) -> None:
    run = sub.add_parser(
        "run", help="headless pipeline: identify, distill, auto-label, correct, report"
    )
    run.add_argument("--dataset", default="digits")
    run.add_argument("--root", default=None, help="dataset folder (torchvision sets)")
    run.add_argument("--out", required=True, type=Path)
    run.add_argument("--strategy", default=DEFAULT_STRATEGY, choices=list(STRATEGIES))
    run.add_argument("--labeler", default="reference", choices=["reference"])
    run.add_argument(
        "--audit",
        default="none",
        choices=list(AUDITS),
        help="confirm training relabels inside labeled regions, image by image",
    )
    run.add_argument("--device", default="auto")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--steps", type=int, default=300)
    run.add_argument(
        "--no-auto",
        action="store_true",
        help="one round with correct()'s defaults instead of its small settings grid (auto=True)",
    )
    run.add_argument("--max-regions", type=int, default=100)
    run.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_check(sub: Any) -> None:
    check = sub.add_parser(
        "check",
        help="check a classifier against a regression suite (exit 1 when a region fails)",
        description="Check a classifier against a suite written by DefuseSession.export_tests. "
        "Exit status: 0 every region passed, 1 a region failed, 2 bad input.",
    )
    check.add_argument("suite", type=Path, help="the suite directory")
    which = check.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="MODULE:FACTORY returning the classifier (an nn.Module)")
    which.add_argument(
        "--model-file",
        type=Path,
        help="a TorchScript file, a torch.export .pt2 file or a dw.save_model .safetensors file",
    )
    check.add_argument("--weights", type=Path, help="a .safetensors state dict for --model")
    check.add_argument("--device", default="auto")
    check.add_argument(
        "--dataset", help="refuse a suite exported from another dataset (e.g. digits)"
    )
    check.add_argument("--root", default=None, help="dataset folder for --dataset")
    check.add_argument("--junit", type=Path, help="write JUnit XML, one testcase per region")


def run_check(args: argparse.Namespace) -> int:
    """The ``check`` command: 0 when every region passes, 1 when one fails, 2 for bad input."""
    try:
        model = load_classifier(args.model, args.weights, args.model_file)
        data = load_dataset(args.dataset, root=args.root) if args.dataset else None
        result = check_suite(model, args.suite, device=args.device, data=data)
    except (ValueError, TypeError, KeyError, OSError) as exc:
        print(f"defuse-widgets check: error: {exc}", file=sys.stderr)
        return 2
    print(result.table())
    if args.junit is not None:
        result.to_junit(args.junit)
        print(f"junit: {args.junit}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
