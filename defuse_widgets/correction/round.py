"""What one fine-tuning round works with, gathered once from the session: the training rows it
may use, which of them the keep term holds to the starting model (all but those inside a labeled
region that carry its label), the validation images and their regions,
the sampling scales, the validity floor and the labeler vetting samples (if any); and how it
trains and judges one setting."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from defuse_widgets.correction.evaluation import accuracy_by_class
from defuse_widgets.correction.guard import BLENDS, EarlyStopping, Score
from defuse_widgets.correction.samples import measured_scales, region_batches, validity_floor
from defuse_widgets.correction.training import CancelToken, RoundSettings, StepCallback, fine_tune
from defuse_widgets.models.inference import predict_labels
from defuse_widgets.regions.membership import COVERAGE, inside_regions

if TYPE_CHECKING:
    from defuse_widgets.session.session import DefuseSession

MIN_VALIDATION_IMAGES = 10
"""Below this many validation images inside the labeled regions, the regions' score is the
accuracy on held-out decoded samples instead."""
CHECK_SAMPLES = 100


@dataclass
class RoundPlan:
    """The fixed inputs of a round (see :meth:`of`)."""

    session: DefuseSession
    targets: dict[int, int]
    x_fit: torch.Tensor
    y_fit: torch.Tensor
    outside: torch.Tensor | None
    scales: dict[int, float]
    min_validity: float
    validation: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
    vet: Callable[[torch.Tensor], torch.Tensor] | None = None
    tally: dict[str, int] = field(default_factory=dict)
    """Region samples ``"drawn"`` and ``"kept"`` (natural and, with ``vet``, vetted)."""

    @classmethod
    def of(
        cls,
        s: DefuseSession,
        settings: RoundSettings,
        targets: dict[int, int],
        vet: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> RoundPlan:
        """Gather the round's inputs from session ``s`` (encodes the training split once)."""
        regions = s.regions
        assert regions is not None  # correct() checked there are labeled regions
        v = s.validation
        rows = torch.arange(len(s.data.y_train)) if v is None else v.fit_rows
        ids = list(targets)
        y_fit = s.training_labels()[rows]
        outside = None
        if settings.keep > 0:  # every image but those a region's label is meant to change
            inside = inside_regions(regions, s.split_codes("train")[rows], ids)
            labels = torch.tensor([targets[r] for r in ids])
            outside = ~(inside & (y_fit[:, None] == labels)).any(1)
        validation = val_codes = val_inside = None
        if v is not None:
            x_val, y_val = s.validation_data()
            val_codes = s.split_codes("validation")
            val_inside = inside_regions(regions, val_codes, ids)
            validation = (x_val, y_val, val_inside)
        scales = (
            {r: settings.scale for r in targets}
            if settings.scale is not None
            else measured_scales(regions, targets, val_codes, val_inside)
        )
        floor = validity_floor(s.generator, s.split_codes("train")[rows], s.seed, s.device)
        return cls(s, targets, s.data.x_train[rows], y_fit, outside,
                   scales, floor, validation, vet)  # fmt: skip

    def train(
        self, settings: RoundSettings, cancel: CancelToken | None, callback: StepCallback | None
    ) -> tuple[tuple[float, float], dict[str, torch.Tensor], list[float], EarlyStopping | None]:
        """Train one setting; returns its (region, overall) validation score ((0, 0) without a
        validation split), the state it keeps, its losses and its early stopping."""
        s = self.session
        assert s.regions is not None
        draw = s.regions.training_sampler(
            self.targets, self.scales, settings.seed, s.device, coverage=COVERAGE
        )
        batch = region_batches(draw, s.generator, self.min_validity, self.vet, self.tally)
        checker = None
        if self.validation is not None and settings.early_stopping:
            checker = EarlyStopping(self._measure(), s.classifier, settings.tolerance,
                                    settings.patience)  # fmt: skip
        state, losses = fine_tune(s.classifier, self.x_fit, self.y_fit, batch, settings,
                                  cancel, callback, self.outside, checker, BLENDS)  # fmt: skip
        score = (0.0, 0.0) if checker is None else (checker.best.region, checker.best.overall)
        return score, state, losses, checker

    def _measure(self) -> Any:
        """``(model, step) -> Score`` on the validation split."""
        assert self.validation is not None
        x_val, y_val, inside = self.validation
        s, regions = self.session, self.session.regions
        assert regions is not None
        any_inside = inside.any(1)
        counts = torch.bincount(y_val, minlength=s.data.num_classes).tolist()
        samples = None
        if int(any_inside.sum()) < MIN_VALIDATION_IMAGES:
            samples = [
                (s.decode(regions.sample_codes(r, CHECK_SAMPLES, purpose="eval")), label)
                for r, label in self.targets.items()
            ]

        def measure(model: nn.Module, step: int) -> Score:
            pred = predict_labels(model, x_val)
            if samples is None:
                region = float((pred[any_inside] == y_val[any_inside]).float().mean())
            else:
                hits = [(predict_labels(model, x) == label).float().mean() for x, label in samples]
                region = float(sum(hits)) / len(samples)
            per_class = accuracy_by_class(pred, y_val, s.data.num_classes)
            overall = float((pred == y_val).float().mean())
            return Score(step, overall, per_class, region, counts)

        return measure
