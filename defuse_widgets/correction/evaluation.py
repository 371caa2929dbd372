"""Evaluation of a classifier against the test split and the labeled regions, and round records.

The results are small dataclasses (``ev.test_accuracy``,
``record.evaluation.regions[rid].real_accuracy``); :meth:`Record.to_dict` gives plain
JSON-ready dicts, and ``from_dict`` reads them back.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from defuse_widgets.models.inference import predict_labels
from defuse_widgets.regions.distill import RegionSet
from defuse_widgets.regions.membership import inside_regions
from defuse_widgets.utils.checks import one_of
from defuse_widgets.utils.tables import Table, Tables, class_label, percent, points


class Record:
    """A result dataclass that turns into plain JSON-ready dicts (mix into a dataclass)."""

    def _field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain dicts and lists, recursively."""
        return {k: _plain(getattr(self, k)) for k in self._field_names()}

    def __eq__(self, other: object) -> bool:
        """Equal when of one type with equal fields."""
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self._field_names())

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


@dataclass(eq=False)
class RegionAccuracy(Record):
    """How the classifier does on one labeled region.

    ``sample_accuracy``: on held-out decoded samples; ``real_accuracy``: on the ``real_images``
    test images the mixture puts in the region with probability > 0.5 (``real_hits`` right).
    """

    label: int
    sample_accuracy: float
    real_images: int
    real_hits: int
    real_accuracy: float

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> RegionAccuracy:
        """Read :meth:`to_dict` output back (None for NaN is fine)."""
        return cls(
            int(doc["label"]),
            _num(doc["sample_accuracy"]),
            int(doc["real_images"]),
            int(doc["real_hits"]),
            _num(doc["real_accuracy"]),
        )


@dataclass(eq=False)
class Evaluation(Record):
    """Test accuracy (overall and per class) and accuracy per labeled region, for one round."""

    round: int
    test_accuracy: float
    per_class: list[float]
    regions: dict[int, RegionAccuracy] = field(default_factory=dict)

    @property
    def labeled_region_accuracy(self) -> float:
        """Mean held-out sample accuracy over the labeled regions (NaN without any)."""
        rows = list(self.regions.values())
        return sum(r.sample_accuracy for r in rows) / len(rows) if rows else math.nan

    @property
    def labeled_region_real_images(self) -> int:
        """Real test images inside the labeled regions, all regions together."""
        return sum(r.real_images for r in self.regions.values())

    @property
    def labeled_region_real_accuracy(self) -> float:
        """Accuracy on the real test images inside the labeled regions (NaN without any)."""
        n = self.labeled_region_real_images
        return sum(r.real_hits for r in self.regions.values()) / n if n else math.nan

    def _field_names(self) -> tuple[str, ...]:
        return (
            *super()._field_names(),
            "labeled_region_accuracy",
            "labeled_region_real_accuracy",
            "labeled_region_real_images",
        )

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Evaluation:
        """Read :meth:`to_dict` output back (the derived figures are recomputed)."""
        return cls(
            int(doc["round"]),
            _num(doc["test_accuracy"]),
            [_num(v) for v in doc["per_class"]],
            {int(k): RegionAccuracy.from_dict(v) for k, v in doc["regions"].items()},
        )

    def to_table(self, classes: Sequence[str] | None = None, by: str = "class") -> Table:
        """The figures as a :class:`~defuse_widgets.utils.tables.Table`.

        Parameters
        ----------
        classes : sequence of str or None
            Class names (e.g. ``data.classes``); None shows class indices.
        by : {"class", "region"}
            ``"class"``: test accuracy per class; ``"region"``: per labeled region, its label,
            held-out sample accuracy, real test images inside it and the accuracy on them.
        """
        one_of("by", by, ("class", "region"))
        return evaluation_table(self, classes, by)

    def to_pandas(self, classes: Sequence[str] | None = None, by: str = "class") -> Any:
        """:meth:`to_table` as a ``pandas.DataFrame`` (needs pandas)."""
        return self.to_table(classes, by).to_pandas()

    def compare(self, after: Evaluation, classes: Sequence[str] | None = None) -> Table:
        """This evaluation (before) beside ``after``: test accuracy, each class, each labeled
        region and the labeled regions together, with the change in points.

        Examples
        --------
        >>> before = s.evaluate(); s.correct(); before.compare(s.evaluate())  # doctest: +SKIP
        """
        if not isinstance(after, Evaluation):
            raise TypeError(f"after: expected an Evaluation, got {type(after).__name__}")
        return comparison_table(self, after, classes)

    def _repr_html_(self) -> str:
        views = ("class", "region") if self.regions else ("class",)
        title = f"Round {self.round}: test accuracy {percent(self.test_accuracy)}"
        return Tables([self.to_table(by=v) for v in views], title).to_html()


@dataclass(eq=False)
class RoundRecord(Record):
    """One fine-tuning round: its settings, losses, outcome and evaluation.

    A cancelled round has ``round=None``, ``cancelled=True`` and no evaluation. With a
    validation split: ``stopped`` says why the round ended and which step it kept
    (``best_step``; 0: the starting weights), ``checks`` holds each validation score on the way
    (:class:`~defuse_widgets.correction.selection.Score` dicts), ``validation`` the kept weights'
    score beside the starting one (``{"before", "after"}``, with ``"changes"``: each class's
    paired change and its interval, see :mod:`~defuse_widgets.correction.statistics`).
    ``real_images`` counts, per region, the real training images inside it that carry its label
    (upweighted), ``generated_images`` the decoded region samples trained on. ``scales`` are the
    sampling scales per region and ``min_validity`` the validity below which samples were
    dropped; ``vetted`` whether a labeler vetted them too, ``samples_kept`` the share of drawn
    samples trained on (over every setting the round trained, all of ``auto``'s grid).
    ``harm`` lists what the round broke on the test split against the round it started from
    (classes down more than the tolerance, overall down more than 0.5 point; see
    :func:`~defuse_widgets.correction.selection.harm`), and ``grid`` the settings
    ``correct(auto=True)`` tried; ``class_deltas`` the points each class's
    test accuracy moved (positive: up) against the round it started from.
    """

    round: int | None
    cancelled: bool
    settings: dict[str, Any]
    losses: list[float]
    seconds: float
    evaluation: Evaluation | None = None
    base_round: int | None = None
    labels: dict[int, int] = field(default_factory=dict)
    relabels: int = 0
    stopped: str = ""
    best_step: int | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)
    validation: dict[str, Any] | None = None
    scales: dict[int, float] = field(default_factory=dict)
    min_validity: float | None = None
    vetted: bool = False
    samples_kept: float | None = None
    harm: list[dict[str, Any]] = field(default_factory=list)
    grid: list[dict[str, Any]] = field(default_factory=list)
    class_deltas: list[float] = field(default_factory=list)
    real_images: dict[int, int] = field(default_factory=dict)
    generated_images: int = 0

    @property
    def harmful(self) -> bool:
        """Whether the round lowered a class or the overall test accuracy past the tolerance."""
        return bool(self.harm)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> RoundRecord:
        """Read :meth:`to_dict` output back (records saved before a field existed get its
        default)."""
        ev = doc.get("evaluation")
        return cls(
            round=doc["round"],
            cancelled=bool(doc["cancelled"]),
            settings=dict(doc["settings"]),
            losses=[_num(v) for v in doc["losses"]],
            seconds=float(doc["seconds"]),
            evaluation=Evaluation.from_dict(ev) if ev is not None else None,
            base_round=doc.get("base_round"),
            labels={int(k): int(v) for k, v in (doc.get("labels") or {}).items()},
            relabels=int(doc.get("relabels") or 0),
            stopped=str(doc.get("stopped") or ""),
            best_step=doc.get("best_step"),
            checks=list(doc.get("checks") or []),
            validation=doc.get("validation"),
            scales={int(k): float(v) for k, v in (doc.get("scales") or {}).items()},
            min_validity=doc.get("min_validity"),
            vetted=bool(doc.get("vetted")),
            samples_kept=doc.get("samples_kept"),
            harm=list(doc.get("harm") or []),
            grid=list(doc.get("grid") or []),
            class_deltas=[_num(v) for v in doc.get("class_deltas") or []],
            real_images={int(k): int(v) for k, v in (doc.get("real_images") or {}).items()},
            generated_images=int(doc.get("generated_images") or 0),
        )

    def to_tables(self, classes: Sequence[str] | None = None) -> Tables:
        """The round for a person: what it did and why it stopped, then its :meth:`to_table`
        views (settings, validation before/after, test accuracy per class before/after, the
        labeled regions after, and what it harmed), those that have rows."""
        views = [
            by for by in ROUND_VIEWS if by == "settings" or len(round_table(self, classes, by))
        ]
        tables = [round_table(self, classes, by) for by in views]
        return Tables(tables, round_title(self), round_notes(self))

    def to_table(self, classes: Sequence[str] | None = None, by: str = "class") -> Table:
        """One view of the round as a :class:`~defuse_widgets.utils.tables.Table`.

        Parameters
        ----------
        classes : sequence of str or None
            Class names (e.g. ``data.classes``); None shows class indices.
        by : {"class", "region", "settings", "validation", "harm"}
            ``"class"``: test accuracy per class before (the round it started from) and after,
            and the change in points; ``"region"``: the labeled regions after the round;
            ``"settings"``: the round's settings and outcome, one per row; ``"validation"``:
            the validation split's figures before and after; ``"harm"``: what it broke.
        """
        one_of("by", by, ROUND_VIEWS)
        return round_table(self, classes, by)

    def to_pandas(self, classes: Sequence[str] | None = None, by: str = "class") -> Any:
        """:meth:`to_table` as a ``pandas.DataFrame`` (needs pandas)."""
        return self.to_table(classes, by).to_pandas()

    def _repr_html_(self) -> str:
        return self.to_tables().to_html()


def accuracy_by_class(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> list[float]:
    """Per-class accuracy of ``pred`` (N,) against ``y`` (N,); NaN for a class without examples."""
    out = []
    for c in range(num_classes):
        mask = y == c
        out.append(float((pred[mask] == c).float().mean()) if mask.any() else float("nan"))
    return out


def evaluate(
    classifier: nn.Module,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    num_classes: int,
    round: int,
    regions: RegionSet | None = None,
    targets: Mapping[int, int] | None = None,
    test_codes: torch.Tensor | None = None,
    samples: int = 200,
    predict: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Evaluation:
    """Evaluate ``classifier`` on the test split and on the labeled regions ``targets``.

    Parameters
    ----------
    classifier : returns logits; evaluated in eval mode, batched.
    x_test, y_test : (N, C, H, W) test images and (N,) labels.
    num_classes : K, for the per-class figures.
    round : the round the weights belong to (0: the original model).
    regions, targets : the regions and their labels (region id -> class); optional.
    test_codes : (N, d) encoder means of ``x_test``; needed with ``targets``.
    samples : held-out decoded samples per region (``purpose="eval"``, never trained on).
    predict : maps the test images to (N,) classes (e.g. on a Ray pool); None:
        :func:`~defuse_widgets.models.inference.predict_labels` of ``classifier`` here.
    """
    pred = predict_labels(classifier, x_test) if predict is None else predict(x_test).cpu()
    out = Evaluation(
        round,
        float((pred == y_test).float().mean()),
        accuracy_by_class(pred, y_test, num_classes),
    )
    if regions is None or not targets or test_codes is None:
        return out
    prob = regions.predict_proba(test_codes)
    for rid, label in targets.items():
        sample = regions.sample(rid, samples, purpose="eval")
        # probability only: real test codes sit off the error codes' Gaussians (the search
        # shifts them), and the ellipsoid would leave most regions with no real image
        inside = inside_regions(regions, test_codes, [rid], coverage=None, probability=prob)[:, 0]
        hits, n = int((pred[inside] == y_test[inside]).sum()), int(inside.sum())
        out.regions[rid] = RegionAccuracy(
            label,
            float((sample.predictions == label).float().mean()),
            n,
            hits,
            hits / n if n else float("nan"),
        )
    return out


ROUND_VIEWS = ("settings", "validation", "class", "region", "harm")
_PCT = {k: percent for k in ("accuracy", "before", "after", "sample accuracy", "real accuracy")}


def evaluation_table(ev: Evaluation, classes: Sequence[str] | None, by: str) -> Table:
    """The rows of :meth:`Evaluation.to_table`."""
    if by == "class":
        rows = [[class_label(k, classes), acc] for k, acc in enumerate(ev.per_class)]
        return Table(["class", "accuracy"], rows, "test accuracy per class", _PCT)
    rows = [
        [rid, class_label(r.label, classes), r.sample_accuracy, r.real_images, r.real_accuracy]
        for rid, r in sorted(ev.regions.items())
    ]
    columns = ["region", "label", "sample accuracy", "real images", "real accuracy"]
    return Table(columns, rows, "labeled regions", _PCT)


def comparison_table(before: Evaluation, after: Evaluation, classes: Sequence[str] | None) -> Table:
    """The rows of :meth:`Evaluation.compare`."""
    rows: list[list[Any]] = [["test accuracy", before.test_accuracy, after.test_accuracy]]
    rows += [
        [f"class {class_label(k, classes)}", b, a]
        for k, (b, a) in enumerate(zip(before.per_class, after.per_class))
    ]
    for rid in sorted(set(before.regions) | set(after.regions)):
        b, a = before.regions.get(rid), after.regions.get(rid)
        rows.append(
            [f"region {rid}, held-out samples", b and b.sample_accuracy, a and a.sample_accuracy]
        )
    if after.regions:
        rows.append(
            [
                "labeled regions, held-out samples",
                before.labeled_region_accuracy,
                after.labeled_region_accuracy,
            ]
        )
        rows.append(
            [
                f"labeled regions, {after.labeled_region_real_images} real test images",
                before.labeled_region_real_accuracy,
                after.labeled_region_real_accuracy,
            ]
        )
    for row in rows:
        b, a = row[1], row[2]
        known = b is not None and a is not None and not (math.isnan(b) or math.isnan(a))
        row.append(100.0 * (a - b) if known else None)
    title = f"round {before.round} → round {after.round}"
    return Table(
        ["", "before", "after", "change (points)"], rows, title, {**_PCT, "change (points)": points}
    )


def round_title(rec: RoundRecord) -> str:
    """One line: which round, from which, cancelled or how many steps it kept."""
    if rec.cancelled:
        return "Cancelled round (nothing kept)"
    kept = (
        ""
        if rec.best_step is None
        else (
            ", kept the starting weights" if rec.best_step == 0 else f", kept step {rec.best_step}"
        )
    )
    base = "" if rec.base_round is None else f" (from round {rec.base_round})"
    return f"Round {rec.round}{base}: {len(rec.losses)} steps in {rec.seconds:.1f} s{kept}"


def round_notes(rec: RoundRecord) -> list[str]:
    """Why the round stopped and whether it harmed anything, as sentences."""
    notes = [f"stopped: {rec.stopped or 'ran every step'}"]
    if rec.harm:
        lost = ", ".join(
            f"{_harmed(h)} {percent(h['before'])} → {percent(h['after'])}" for h in rec.harm
        )
        notes.append(f"harm on the test split: {lost} (s.revert() undoes the round)")
    elif not rec.cancelled:
        notes.append("harm: none (no class lost more than the tolerance on the test split)")
    return notes


def _harmed(entry: Mapping[str, Any]) -> str:
    """What a harm entry is about: "class <name>" or "overall accuracy"."""
    return "overall accuracy" if entry.get("class") is None else f"class {entry['name']}"


def round_table(rec: RoundRecord, classes: Sequence[str] | None, by: str) -> Table:
    """The rows of :meth:`RoundRecord.to_table`."""
    if by == "settings":
        rows = [[k, _setting_text(v)] for k, v in rec.settings.items()]
        rows += [
            [
                "labels",
                ", ".join(
                    f"region {r}: {class_label(c, classes)}" for r, c in sorted(rec.labels.items())
                ),
            ]
        ]
        rows += [
            [k, _setting_text(getattr(rec, k))]
            for k in ("relabels", "scales", "min_validity", "vetted", "samples_kept", "best_step")
        ]
        return Table(["setting", "value"], rows, "settings")
    if by == "validation":
        v = rec.validation or {}
        rows = [
            [name, v["before"][key], v["after"][key]]
            for name, key in (("overall", "overall"), ("labeled regions", "region"))
            if v
        ]
        return Table(["validation split", "before", "after"], rows, "validation split", _PCT)
    if by == "harm":
        rows = [[_harmed(h), h["before"], h["after"], -float(h["drop"])] for h in rec.harm]
        return Table(
            ["what", "before", "after", "change (points)"],
            rows,
            "harm",
            {**_PCT, "change (points)": points},
        )
    if rec.evaluation is None:
        return Table(
            ["class", "before", "after", "change (points)"]
            if by == "class"
            else ["region", "label", "sample accuracy", "real images", "real accuracy"],
            [],
            f"test accuracy per {by}",
        )
    if by == "region":
        return evaluation_table(rec.evaluation, classes, "region")
    after = rec.evaluation.per_class
    deltas = rec.class_deltas or [math.nan] * len(after)
    rows = [
        [class_label(k, classes), a - d / 100.0, a, d]
        for k, (a, d) in enumerate(zip(after, deltas))
    ]
    return Table(
        ["class", "before", "after", "change (points)"],
        rows,
        "test accuracy per class",
        {**_PCT, "change (points)": points},
    )


def _setting_text(value: Any) -> Any:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_setting_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(str(_setting_text(v)) for v in value)
    return value
