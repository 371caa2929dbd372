"""Evaluation of a classifier against the test split and the labeled regions, and round records.

The results are small dataclasses that also read like the dicts they replaced
(``ev["test_accuracy"]``, ``record["evaluation"]["regions"][rid]["real_accuracy"]``), so code
written against either keeps working; :meth:`Record.to_dict` gives plain JSON-ready dicts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from defuse_widgets.models.inference import predict_labels
from defuse_widgets.regions.distill import RegionSet
from defuse_widgets.regions.membership import inside_regions


class Record(Mapping[str, Any]):
    """Read-only mapping access to a dataclass's fields (mix into a dataclass)."""

    def __getitem__(self, key: str) -> Any:
        if key not in self._field_names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._field_names())

    def __len__(self) -> int:
        return len(self._field_names())

    def _field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain dicts and lists, recursively."""
        return {k: _plain(v) for k, v in self.items()}


def _plain(value: Any) -> Any:
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


@dataclass(eq=False)
class RoundRecord(Record):
    """One fine-tuning round: its settings, losses, outcome and evaluation.

    A cancelled round has ``round=None``, ``cancelled=True`` and no evaluation. With a
    validation split: ``stopped`` says why the round ended and which step it kept
    (``best_step``; 0: the starting weights), ``checks`` holds each validation score on the way
    (:class:`~defuse_widgets.correction.guard.Score` dicts), ``validation`` the kept weights' score beside
    the starting one (``{"before", "after"}``). ``scales`` are the sampling scales per region and
    ``min_validity`` the validity below which samples were dropped; ``vetted`` whether a labeler
    vetted them too, ``samples_kept`` the share of drawn samples trained on (over every setting
    the round trained, all of ``auto``'s grid). ``harm`` lists what the round broke on the test
    split against the round it started from (classes down more than the tolerance, overall down
    more than 0.5 point; see :func:`~defuse_widgets.correction.guard.harm`), and
    ``grid`` the settings ``correct(auto=True)`` tried; ``class_deltas`` the points each class's
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
        )


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
        inside = inside_regions(regions, test_codes, [rid], probability=prob)[:, 0]
        hits, n = int((pred[inside] == y_test[inside]).sum()), int(inside.sum())
        out.regions[rid] = RegionAccuracy(
            label,
            float((sample.predictions == label).float().mean()),
            n,
            hits,
            hits / n if n else float("nan"),
        )
    return out
