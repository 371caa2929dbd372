"""Check a classifier against a regression suite: per-region accuracy, pass/fail, worst images."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import torch
from torch import nn

from defuse_widgets.correction.evaluation import Record
from defuse_widgets.correction.statistics import accuracy_interval
from defuse_widgets.data.dataset import ImageDataset
from defuse_widgets.models.inference import batched, evaluating
from defuse_widgets.suite.files import Suite, SuiteRegion, load_suite
from defuse_widgets.utils.checks import positive_int
from defuse_widgets.utils.device import module_device, resolve_device
from defuse_widgets.utils.tables import Table, percent

WORST = 16


@dataclass(eq=False)
class RegionResult(Record):
    """How a model does on one region of a suite.

    ``accuracy`` is on the region's decoded samples (all labeled ``label``); ``real_accuracy``
    on its ``real_images`` real images (their own labels; NaN without any); ``*_interval`` their
    exact 90% intervals. A check fails only when its whole interval lies below its threshold:
    on 4 images, 2 right (0.50, interval 0.10-0.90) says nothing against a threshold of 0.80,
    and the check says so in ``notes`` instead of failing the suite by chance.
    """

    id: int
    label: int
    label_name: str
    samples: int
    accuracy: float
    min_accuracy: float
    real_images: int
    real_accuracy: float
    min_real_accuracy: float
    passed: bool
    interval: tuple[float, float] = (0.0, 1.0)
    real_interval: tuple[float, float] = (0.0, 1.0)
    notes: list[str] = field(default_factory=list)


@dataclass(eq=False)
class SuiteResult(Record):
    """The result of :func:`check_suite`.

    ``regions``: one :class:`RegionResult` per suite region; ``passed``: all of them passed;
    ``worst``: the images with the lowest true-class probability, as dicts (``region``,
    ``kind`` "sample" or "real", ``index`` within that kind, ``label``, ``predicted``,
    ``probability`` of the true class); ``worst_images`` (n, C, H, W) those images.
    """

    path: str
    classes: list[str]
    regions: list[RegionResult]
    passed: bool
    worst: list[dict[str, Any]] = field(default_factory=list)
    worst_images: torch.Tensor | None = None

    def _field_names(self) -> tuple[str, ...]:
        return ("path", "classes", "regions", "passed", "worst")

    @property
    def failed(self) -> list[RegionResult]:
        """The regions that did not pass."""
        return [r for r in self.regions if not r.passed]

    def table(self) -> str:
        """A plain-text table: one row per region, then the overall verdict."""
        head = f"{'region':>6}  {'label':<14}{'samples':>8}{'accuracy':>10}{'min':>6}"
        head += f"{'real':>6}{'real acc':>10}{'min':>6}  result"
        rows = [head]
        for r in self.regions:
            real = "-" if not r.real_images else f"{r.real_accuracy:.3f}"
            verdict = "pass" if r.passed else "FAIL"
            verdict += " (too few to tell)" if r.passed and r.notes else ""
            rows.append(
                f"{r.id:>6}  {r.label_name[:13]:<14}{r.samples:>8}{r.accuracy:>10.3f}"
                f"{r.min_accuracy:>6.2f}{r.real_images:>6}{real:>10}{r.min_real_accuracy:>6.2f}"
                f"  {verdict}"
            )
        n = len(self.failed)
        verdict = "PASSED" if self.passed else f"FAILED ({n} region{'s' if n != 1 else ''})"
        rows.append(f"{len(self.regions)} regions: {verdict}")
        return "\n".join(rows)

    def __repr__(self) -> str:
        return f"SuiteResult({self.path})\n{self.table()}"

    def figure(self) -> Any:
        """A plotly figure: accuracy per region (samples and real images) against its threshold."""
        import plotly.graph_objects as go

        names = [f"region {r.id} ({r.label_name})" for r in self.regions]
        fig = go.Figure()
        fig.add_bar(
            x=names,
            y=[r.accuracy for r in self.regions],
            name="samples",
            marker_color=["#2a9d8f" if r.passed else "#e63946" for r in self.regions],
        )
        fig.add_bar(x=names, y=[_none(r.real_accuracy) for r in self.regions], name="real images")
        fig.add_scatter(
            x=names,
            y=[r.min_accuracy for r in self.regions],
            mode="markers",
            marker={"symbol": "line-ew-open", "size": 28, "color": "black"},
            name="threshold",
        )
        verdict = "passed" if self.passed else "failed"
        fig.update_layout(
            title=f"Regression suite: {verdict}",
            barmode="group",
            yaxis={"title": "accuracy", "range": [0, 1.05]},
            height=380,
        )
        return fig

    def to_junit(self, path: str | os.PathLike | None = None) -> str:
        """JUnit XML, one testcase per region (also written to ``path`` when given)."""
        suite = ET.Element(
            "testsuite",
            name="defuse-widgets",
            tests=str(len(self.regions)),
            failures=str(len(self.failed)),
            errors="0",
        )
        for r in self.regions:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"defuse_widgets.suite.export.{_stem(self)}",
                name=f"region {r.id} ({r.label_name})",
            )
            if not r.passed:
                ET.SubElement(case, "failure", message=failure_line(r)).text = failure_line(r)
        root = ET.Element("testsuites")
        root.append(suite)
        text = '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode")
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_table(self) -> Table:
        """One row per region (label, samples, accuracy against its threshold, real images and
        their accuracy against theirs, pass/fail) as a
        :class:`~defuse_widgets.utils.tables.Table`; the verdict is in its title."""
        return suite_table(self)

    def to_pandas(self) -> Any:
        """:meth:`to_table` as a ``pandas.DataFrame``, one row per region (needs pandas)."""
        return self.to_table().to_pandas()

    def _repr_html_(self) -> str:
        return self.to_table().to_html()


def _stem(result: SuiteResult) -> str:
    return "".join(c if c.isalnum() else "_" for c in Path(result.path).name) or "suite"


def _none(value: float) -> float | None:
    return None if math.isnan(value) else value


def failure_line(r: RegionResult) -> str:
    """One line saying why a region failed: accuracy and its interval against threshold."""
    parts = []
    if r.interval[1] < r.min_accuracy:
        parts.append(
            f"accuracy {r.accuracy:.3f} (90% interval {r.interval[0]:.2f}-{r.interval[1]:.2f}) "
            f"< {r.min_accuracy:.2f} on {r.samples} samples"
        )
    if r.real_images and r.real_interval[1] < r.min_real_accuracy:
        parts.append(
            f"real-image accuracy {r.real_accuracy:.3f} (90% interval "
            f"{r.real_interval[0]:.2f}-{r.real_interval[1]:.2f}) < {r.min_real_accuracy:.2f} "
            f"on {r.real_images} images"
        )
    return f"region {r.id} ({r.label_name}): " + "; ".join(parts)


def check_suite(
    model: nn.Module,
    path: str | os.PathLike,
    device: str | torch.device = "auto",
    data: ImageDataset | None = None,
    batch_size: int = 1024,
    worst: int = WORST,
) -> SuiteResult:
    """Run ``model`` on a suite written by ``DefuseSession.export_tests`` and judge each region.

    Parameters
    ----------
    model : a classifier returning logits (N, K) for images (N, C, H, W) in [0, 1], K the suite's
        class count; it is moved to ``device`` and run in eval mode (its modes are restored).
    path : the suite directory.
    device : "auto" (CUDA, MPS, CPU) or a device.
    data : when given, the suite must come from this dataset (same fingerprint).
    batch_size : images per forward pass.
    worst : how many of the lowest true-class-probability images to return.

    Returns
    -------
    SuiteResult
        Per-region accuracy and verdict, overall ``passed``, the worst images.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module returning logits, got {type(model)!r}")
    positive_int("batch_size", batch_size)
    positive_int("worst", worst, minimum=0)
    suite = load_suite(path, data)
    target = resolve_device(device)
    if module_device(model) != target:
        model.to(target)
    with evaluating(model):
        check_fits(model, suite, target)
        probs = [
            (
                _probabilities(model, r.samples, target, batch_size),
                _probabilities(model, r.real, target, batch_size),
            )
            for r in suite.regions
        ]
    results = [_judge(r, p, q) for r, (p, q) in zip(suite.regions, probs)]
    rows, images = _worst(suite, probs, worst)
    return SuiteResult(
        str(suite.path), suite.classes, results, all(r.passed for r in results), rows, images
    )


def check_fits(model: nn.Module, suite: Suite, device: torch.device) -> None:
    """ValueError unless ``model`` maps two suite images to (2, K) logits, K the class count."""
    probe = suite.regions[0].samples[:2].to(device)
    shape, k = suite.image_shape, len(suite.classes)
    try:
        with torch.inference_mode():
            out = model(probe)
    except Exception as exc:
        raise ValueError(
            f"model: expected a classifier of images {shape} (C, H, W), but it failed on the "
            f"suite's images ({type(exc).__name__}: {exc}); is this the suite of its dataset?"
        ) from exc
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != len(probe):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model: expected logits of shape ({len(probe)}, {k}), got {got}")
    if out.shape[1] != k:
        raise ValueError(
            f"model: expected logits for the suite's {k} classes, got {out.shape[1]} outputs; "
            "check the model against the suite of its own dataset"
        )
    out = out.float()
    if not torch.isfinite(out).all():
        raise ValueError("model: expected finite logits, got NaN or infinite outputs")
    sums = out.sum(1)
    if out.min() >= 0 and out.max() <= 1 and torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
        raise ValueError(
            "model: expected logits, got probabilities (non-negative rows summing to 1); "
            "check the model without its final softmax"
        )


def _probabilities(
    model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int
) -> torch.Tensor:
    return batched(
        lambda x: model(x).float().softmax(1), images, device=device, batch_size=batch_size
    )


def _judge(region: SuiteRegion, sample_p: torch.Tensor, real_p: torch.Tensor) -> RegionResult:
    hits = int((sample_p.argmax(1) == region.label).sum())
    acc = hits / len(sample_p) if len(sample_p) else math.nan
    n_real = len(region.real)
    real_hits = int((real_p.argmax(1) == region.real_labels).sum()) if n_real else 0
    real_acc = real_hits / n_real if n_real else math.nan
    interval = accuracy_interval(hits, len(sample_p))
    real_interval = accuracy_interval(real_hits, n_real)
    notes = [
        f"{what} accuracy {value:.2f} on {n} images is below {threshold:.2f}, but its 90% "
        f"interval {low:.2f}-{high:.2f} reaches it: too few images to tell"
        for what, value, n, threshold, (low, high) in (
            ("sample", acc, len(sample_p), region.min_accuracy, interval),
            ("real-image", real_acc, n_real, region.min_real_accuracy, real_interval),
        )
        if n and value < threshold <= high
    ]
    passed = interval[1] >= region.min_accuracy and (
        not n_real or real_interval[1] >= region.min_real_accuracy
    )
    return RegionResult(
        region.id,
        region.label,
        region.label_name,
        len(region.samples),
        acc,
        region.min_accuracy,
        n_real,
        real_acc,
        region.min_real_accuracy,
        passed,
        interval,
        real_interval,
        notes,
    )


def _worst(
    suite: Suite, probs: list[tuple[torch.Tensor, torch.Tensor]], n: int
) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """The ``n`` images with the lowest probability of their true class, over all regions."""
    rows, images, scores = [], [], []
    for region, (p, q) in zip(suite.regions, probs):
        for kind, imgs, labels, pr in (
            ("sample", region.samples, torch.full((len(p),), region.label), p),
            ("real", region.real, region.real_labels, q),
        ):
            if not len(imgs):
                continue
            true_p = pr.gather(1, labels[:, None].long())[:, 0]
            for i in range(len(imgs)):
                rows.append(
                    {
                        "region": region.id,
                        "kind": kind,
                        "index": i,
                        "label": int(labels[i]),
                        "predicted": int(pr[i].argmax()),
                        "probability": float(true_p[i]),
                    }
                )
            images.append(imgs)
            scores.append(true_p)
    order = torch.cat(scores).argsort()[:n]
    picked = torch.cat(images)[order]
    return [rows[i] for i in order.tolist()], picked


def suite_table(result: SuiteResult) -> Table:
    """The rows of :meth:`SuiteResult.to_table`."""
    columns = [
        "region",
        "label",
        "samples",
        "accuracy",
        "interval",
        "min accuracy",
        "real images",
        "real accuracy",
        "real interval",
        "min real accuracy",
        "result",
    ]
    rows = [
        [
            r.id,
            r.label_name,
            r.samples,
            r.accuracy,
            _interval(r.interval),
            r.min_accuracy,
            r.real_images,
            r.real_accuracy if r.real_images else None,
            _interval(r.real_interval) if r.real_images else None,
            r.min_real_accuracy,
            ("pass (too few to tell)" if r.notes else "pass") if r.passed else "FAIL",
        ]
        for r in result.regions
    ]
    n = len(result.failed)
    verdict = "passed" if result.passed else f"FAILED ({n} of {len(result.regions)} regions)"
    formats = {
        k: percent for k in ("accuracy", "min accuracy", "real accuracy", "min real accuracy")
    }
    return Table(
        columns,
        rows,
        f"Suite {result.path}: {verdict}",
        formats,
        [failure_line(r) for r in result.failed],
    )


def _interval(bounds: tuple[float, float]) -> str:
    return f"{100 * bounds[0]:.0f}-{100 * bounds[1]:.0f}%"
