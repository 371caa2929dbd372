"""Judging a fine-tuning round by validation: early stopping on the best step, and harm flags.

A round may only keep weights that lift the labeled regions without a real drop of more than
``tolerance`` points in any class, or of more than ``OVERALL_TOLERANCE`` overall, against the
weights it started from (paired intervals on the same validation images, see
:mod:`~defuse_widgets.correction.statistics`; a class too small for an interval is judged by its
plain drop). Among those it keeps the best step; when no step qualifies it keeps the
starting weights and says so. A loss of a single image never counts: on a split of 18 images
per class one image is 5.6 points, which says nothing about the model.

Besides the steps, the round's last weights blended with its starting weights (``BLENDS``) are
candidates too: a smaller move along the same path that often keeps the fix at a fraction of the
side effects (weight-space ensembling, as in Wortsman et al.'s WiSE-FT).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from defuse_widgets.correction.settings import (
    DEFAULT_PATIENCE,
    DEFAULT_TOLERANCE,
    OVERALL_TOLERANCE,
)
from defuse_widgets.correction.statistics import (
    DEFAULT_CONFIDENCE,
    Change,
    coarse,
    holm,
    paired_change,
    plain_harm,
)
from defuse_widgets.correction.training import snapshot


@dataclass(frozen=True)
class Score:
    """One look at a model on the validation split (accuracies as fractions)."""

    step: int
    overall: float
    per_class: list[float]
    region: float
    counts: list[int]
    blend: float = 1.0  # the share of the step's weights, the rest the starting weights'
    correct: torch.Tensor | None = field(default=None, compare=False, repr=False)
    """(n,) bool: which validation images the model gets right (for paired comparisons)."""
    labels: torch.Tensor | None = field(default=None, compare=False, repr=False)
    """(n,) the validation labels, to split ``correct`` by class."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "overall": self.overall,
            "per_class": list(self.per_class),
            "region": self.region,
            "counts": list(self.counts),
            "blend": self.blend,
        }


def class_drops(before: Sequence[float], after: Sequence[float]) -> list[float]:
    """Points each class lost from ``before`` to ``after`` (negative: gained; NaN classes: 0)."""
    return [
        0.0 if math.isnan(b) or math.isnan(a) else 100.0 * (b - a) for b, a in zip(before, after)
    ]


def harm(
    before_overall: float,
    before_per_class: Sequence[float],
    after_overall: float,
    after_per_class: Sequence[float],
    tolerance: float = DEFAULT_TOLERANCE,
    classes: Sequence[str] = (),
    counts: Sequence[int] = (),
) -> list[dict[str, Any]]:
    """What a round broke: one entry per class that lost more than ``tolerance`` points, and one
    for the overall accuracy if it lost more than ``OVERALL_TOLERANCE``; empty when nothing did.
    With ``counts`` (images per class), a loss of at most one image is not counted.

    Each entry: ``{"class": index or None (overall), "name", "before", "after", "drop"}`` with
    accuracies as fractions and ``drop`` in points, largest drop first.
    """
    out: list[dict[str, Any]] = []
    for c, drop in enumerate(class_drops(before_per_class, after_per_class)):
        if plain_harm(drop, tolerance, counts[c] if c < len(counts) else 0):
            name = classes[c] if c < len(classes) else str(c)
            out.append(
                {
                    "class": c,
                    "name": name,
                    "before": before_per_class[c],
                    "after": after_per_class[c],
                    "drop": drop,
                }
            )
    out.sort(key=lambda e: -float(e["drop"]))
    overall = 100.0 * (before_overall - after_overall)
    if plain_harm(overall, OVERALL_TOLERANCE, sum(counts)):
        out.append(
            {
                "class": None,
                "name": "overall",
                "before": before_overall,
                "after": after_overall,
                "drop": overall,
            }
        )
    return out


def changes(start: Score, score: Score, confidence: float = DEFAULT_CONFIDENCE) -> list[Change]:
    """Each class's paired :class:`~defuse_widgets.correction.statistics.Change` from ``start`` to
    ``score`` on the same validation images, then the overall one (last)."""
    if start.correct is None or score.correct is None or start.labels is None:
        raise ValueError("changes: both scores need their per-image correctness")
    out = [
        paired_change(
            start.correct[start.labels == c], score.correct[start.labels == c], confidence
        )
        for c in range(len(start.per_class))
    ]
    return [*out, paired_change(start.correct, score.correct, confidence)]


def paired_harm(
    start: Score,
    score: Score,
    tolerance: float = DEFAULT_TOLERANCE,
    classes: Sequence[str] = (),
    confidence: float = DEFAULT_CONFIDENCE,
) -> list[dict[str, Any]]:
    """What ``score`` broke against ``start`` on the same images: the classes whose drop is real
    and above ``tolerance`` points (or, on a class too small for an interval to say anything,
    whose plain drop is: :func:`~defuse_widgets.correction.statistics.coarse`), and the overall
    accuracy if its drop is real and above ``OVERALL_TOLERANCE``; entries as :func:`harm`'s, with
    ``low``, ``high`` (the drop's interval) and ``p`` (Holm-adjusted).

    "Real" for a class: its exact one-sided p-value, adjusted by Holm's method for the number of
    classes, is at most ``(1 - confidence) / 2``: with ten classes tested at 5% each, one of them
    would read as harmed by chance in four rounds of ten."""
    *per_class, overall = changes(start, score, confidence)
    alpha = (1.0 - confidence) / 2
    adjusted = holm([c.p for c in per_class])
    out: list[dict[str, Any]] = []
    for c, change in enumerate(per_class):
        real = adjusted[c] <= alpha and change.drop > tolerance
        if real or coarse(change, tolerance, confidence):
            name = classes[c] if c < len(classes) else str(c)
            out.append(
                {
                    "class": c,
                    "name": name,
                    "before": start.per_class[c],
                    "after": score.per_class[c],
                    "drop": change.drop,
                    "low": change.low,
                    "high": change.high,
                    "p": adjusted[c],
                }
            )
    out.sort(key=lambda e: -float(e["drop"]))
    if overall.exceeds(OVERALL_TOLERANCE):
        out.append(
            {
                "class": None,
                "name": "overall",
                "before": start.overall,
                "after": score.overall,
                "drop": overall.drop,
                "low": overall.low,
                "high": overall.high,
            }
        )
    return out


class EarlyStopping:
    """Checks a round's working copy every few steps and keeps the best acceptable weights.

    ``measure(model) -> Score`` scores a model on validation (the step is filled in here).
    After ``patience`` checks without a better acceptable step the round stops.
    """

    def __init__(
        self,
        measure: Callable[[nn.Module, int], Score],
        start_model: nn.Module,
        tolerance: float = DEFAULT_TOLERANCE,
        patience: int = DEFAULT_PATIENCE,
        confidence: float = DEFAULT_CONFIDENCE,
        classes: Sequence[str] = (),
    ):
        self.measure, self.tolerance, self.patience = measure, float(tolerance), int(patience)
        self.confidence, self.classes = float(confidence), tuple(classes)
        self.start = self.best = measure(start_model, 0)
        self.best_state: dict[str, Any] | None = None
        self.checks: list[Score] = [self.start]
        self.stale = 0
        self.reason = ""
        self.refused: tuple[Score, list[dict[str, Any]]] | None = None
        """The refused check that lifted the regions most, and what it broke."""
        self.refused_state: dict[str, Any] | None = None
        """That check's weights (see :meth:`DefuseSession.confirm_disputes`)."""

    def acceptable(self, score: Score) -> bool:
        """No class really lost more than the tolerance, the overall accuracy not more than
        ``OVERALL_TOLERANCE`` (paired intervals when the scores carry per-image correctness;
        else plain drops, a single image never counting)."""
        return not self.broken(score)

    def broken(self, score: Score) -> list[dict[str, Any]]:
        """What ``score`` broke against the start (see :func:`paired_harm` and :func:`harm`)."""
        if self.start.correct is not None and score.correct is not None:
            return paired_harm(self.start, score, self.tolerance, self.classes, self.confidence)
        return harm(
            self.start.overall,
            self.start.per_class,
            score.overall,
            score.per_class,
            self.tolerance,
            self.classes,
            score.counts,
        )

    def check(self, step: int, model: nn.Module, blend: float = 1.0) -> bool:
        """Score ``model`` after ``step`` steps (``blend``: its share in a blend with the
        starting weights); True when the round should stop."""
        score = replace(self.measure(model, step), blend=blend)
        self.checks.append(score)
        better = (score.region, score.overall) > (self.best.region, self.best.overall)
        broken = self.broken(score) if better else []
        if broken and (self.refused is None or score.region > self.refused[0].region):
            self.refused, self.refused_state = (score, broken), snapshot(model)
        if better and not broken:
            self.best, self.best_state, self.stale = score, snapshot(model), 0
        elif blend == 1.0:  # a blend is a last look after the steps, not one more step
            self.stale += 1
        if self.stale >= self.patience and not self.reason:
            self.reason = f"no better acceptable step in the last {self.patience} checks"
            return True
        return False

    def _refusal(self, score: Score, broken: list[dict[str, Any]]) -> str:
        """What the best refused check would have done, and what a person can do about it."""
        worst = broken[0]
        interval = (
            f" (interval {worst['low']:.1f} to {worst['high']:.1f})" if "low" in worst else ""
        )
        return (
            f". The best refused check (step {score.step}) lifted the regions on validation from "
            f"{100 * self.start.region:.0f}% to {100 * score.region:.0f}% but cost "
            f"{worst['name']} {worst['drop']:.1f} points{interval}. If the {worst['name']} images "
            "it changed are not all what their labels say (the labels may carry the bug), let a "
            "labeler or a person decide on them (confirm_disputes) and run the round again; "
            "otherwise try fewer steps, a smaller lam, or a larger tolerance"
        )

    def finish(self, steps: int) -> str:
        """Why the round stopped, for its record (call once, after the last step)."""
        if not self.reason:
            self.reason = f"ran all {steps} steps"
        if self.best_state is None:
            self.reason += (
                "; no step lifted the regions without a real drop of more than "
                f"{self.tolerance:g} point{'' if self.tolerance == 1 else 's'} in a class, so the "
                "round keeps its starting weights"
            )
            if self.refused is not None:
                self.reason += self._refusal(*self.refused)
        else:
            self.reason += f"; kept step {self.best.step}"
            if self.best.blend != 1.0:
                self.reason += f" blended {self.best.blend:.0%} with the starting weights"
        return self.reason
