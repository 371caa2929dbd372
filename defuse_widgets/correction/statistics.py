"""How sure a drop is: paired comparisons of two models on the same images.

A round is judged on the validation images before and after: each image is right or wrong under
each model. Only the images that changed say anything (``lost``: right before, wrong after;
``gained``: the reverse). Given ``m = lost + gained`` changed images, ``lost`` is binomial with
an unknown share ``p``; the drop in points is ``100 * m * (2p - 1) / n`` over ``n`` images, and
an exact (Clopper-Pearson) interval for ``p`` gives one for the drop. This is the exact form of
McNemar's test, stated as an interval rather than a p-value, so a record can show it.

A class counts as harmed when its drop is real and larger than the tolerance: the interval lies
above zero (chance cannot explain the drop) and the drop itself is above the tolerance. On 300
images one point is 3 images; a fixed threshold would refuse rounds on noise. Asking the whole
interval to lie above the tolerance instead, as an earlier version did, let real harm through:
on Fashion-MNIST it kept rounds that cost Shirt 3.7 and 6.0 points on the test images.

Below ``images_to_resolve(BLIND_POINTS)`` images (41 at the default confidence) the comparison
is blind: it cannot call even a 10-point drop real, so on the ~30 validation images a class of
digits has, it would let a round cost a class 10 points. Such classes are judged by their plain
drop instead (:func:`coarse`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import torch
from scipy.stats import beta, binom

DEFAULT_CONFIDENCE = 0.9
"""Two-sided confidence of the drop's interval (its lower end is a one-sided 95% bound)."""


@dataclass(frozen=True)
class Change:
    """The drop of accuracy from one model to another on the same ``images``, in points.

    ``drop`` is positive when accuracy fell; ``low``..``high`` its interval at the confidence
    it was computed with; ``lost``/``gained``: images right before and wrong after, and the
    reverse (``lost``: the negative flips); ``p`` the one-sided exact p-value of the drop (see
    :func:`drop_pvalue`)."""

    drop: float
    low: float
    high: float
    images: int
    lost: int
    gained: int
    p: float = 1.0

    def exceeds(self, tolerance: float) -> bool:
        """Whether the drop is real (its interval lies above zero) and above ``tolerance``
        points."""
        return self.low > 0 and self.drop > tolerance

    def to_dict(self) -> dict[str, float | int]:
        return {
            "drop": self.drop,
            "low": self.low,
            "high": self.high,
            "images": self.images,
            "lost": self.lost,
            "gained": self.gained,
            "p": self.p,
        }


def paired_change(
    before: torch.Tensor, after: torch.Tensor, confidence: float = DEFAULT_CONFIDENCE
) -> Change:
    """The :class:`Change` from ``before`` to ``after``: (n,) bool, whether each image is right."""
    if before.shape != after.shape or before.ndim != 1:
        raise ValueError(
            f"before, after: expected two (n,) masks of one shape, got {tuple(before.shape)} "
            f"and {tuple(after.shape)}"
        )
    n = len(before)
    lost = int((before & ~after).sum())
    gained = int((~before & after).sum())
    if n == 0:
        return Change(0.0, -math.inf, math.inf, 0, 0, 0)
    low_p, high_p = _share_interval(lost, lost + gained, confidence)
    scale = 100.0 * (lost + gained) / n
    return Change(
        100.0 * (lost - gained) / n,
        scale * (2 * low_p - 1),
        scale * (2 * high_p - 1),
        n,
        lost,
        gained,
        drop_pvalue(lost, gained),
    )


def drop_pvalue(lost: int, gained: int) -> float:
    """One-sided exact p-value that accuracy fell: with no real change each changed image is as
    likely lost as gained, so ``P(X >= lost)`` for ``X ~ Binomial(lost + gained, 1/2)`` (1 when
    nothing changed). It is at most ``(1 - confidence) / 2`` exactly when the lower end of the
    drop's interval at ``confidence`` lies above zero."""
    if lost + gained == 0:
        return 1.0
    return float(binom.sf(lost - 1, lost + gained, 0.5))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as ``pvalues``): a hypothesis is rejected
    at family-wise level ``alpha`` when its adjusted p-value is at most ``alpha``, whatever the
    number of hypotheses (one per class for a round's per-class tests).

    Examples
    --------
    >>> [round(p, 3) for p in holm([0.01, 0.04, 0.03])]
    [0.03, 0.06, 0.06]
    """
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    out = [1.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * float(pvalues[i])))
        out[i] = running
    return out


def _share_interval(hits: int, trials: int, confidence: float) -> tuple[float, float]:
    """Clopper-Pearson interval of a binomial share (0..1 without trials)."""
    if trials == 0:
        return 0.5, 0.5  # nothing changed: the drop is exactly 0
    alpha = (1.0 - confidence) / 2
    low = 0.0 if hits == 0 else float(beta.ppf(alpha, hits, trials - hits + 1))
    high = 1.0 if hits == trials else float(beta.ppf(1 - alpha, hits + 1, trials - hits))
    return low, high


BLIND_POINTS = 5.0
"""A class too small for a drop of twice this many points to count as harm
(``images_to_resolve(BLIND_POINTS)``) is judged coarsely."""


def coarse(change: Change, tolerance: float, confidence: float = DEFAULT_CONFIDENCE) -> bool:
    """Whether ``change`` counts as harm on a class too small for its interval to say anything
    (fewer than ``images_to_resolve(BLIND_POINTS)`` images): its plain drop is above
    ``tolerance`` and above one image (and a half, so a single image never counts)."""
    if change.images == 0 or change.images >= images_to_resolve(BLIND_POINTS, confidence):
        return False
    return plain_harm(change.drop, tolerance, change.images)


def plain_harm(drop: float, tolerance: float, images: int = 0) -> bool:
    """Whether a drop of ``drop`` points counts as harm by itself: above ``tolerance`` and, on
    ``images`` images (0: not known), above one image and a half (a single image never counts)."""
    return drop > tolerance and drop > (150.0 / images if images > 0 else 0.0)


@cache
def images_to_resolve(tolerance: float, confidence: float = DEFAULT_CONFIDENCE) -> int:
    """The fewest images of a class on which a drop of twice ``tolerance`` points, with no image
    gained, counts as harm (:meth:`Change.exceeds`: real, and above the tolerance), so that a
    harm of that size is told from noise."""
    if tolerance <= 0:
        raise ValueError(f"tolerance: expected a positive number of points, got {tolerance!r}")
    for n in range(1, 1_000_000):
        after = torch.ones(n, dtype=torch.bool)
        after[: math.ceil(2 * tolerance * n / 100.0)] = False
        if paired_change(torch.ones(n, dtype=torch.bool), after, confidence).exceeds(tolerance):
            return n
    raise ValueError(f"tolerance: {tolerance!r} points cannot be resolved on a million images")


def accuracy_interval(
    hits: int, images: int, confidence: float = DEFAULT_CONFIDENCE
) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of an accuracy of ``hits`` right of ``images``
    ((0, 1) without images)."""
    return _share_interval(hits, images, confidence) if images else (0.0, 1.0)
