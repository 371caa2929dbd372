"""Audit: the training images inside a failure region that carry another label.

Pure functions over tensors plus a small result object; the
:class:`~defuse_widgets.session.session.DefuseSession` holds the confirmed relabels
(:class:`~defuse_widgets.regions.relabels.RelabelStore`) and calls them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from defuse_widgets.regions.labels import Labeler
from defuse_widgets.utils.checks import in_range, positive_int


@dataclass
class AuditResult:
    """Training images one region reaches whose (relabeled) training label differs from its label.

    Rows are sorted so the likeliest mistakes come first: by ``evidence`` that the stored label
    is wrong, the classifier's doubt in the stored label (1 - its probability for it; a reached
    row mostly lies outside the region's Gaussian, so the membership probability would rank
    nearly all of them 0), then by membership and index. Attributes: ``indices`` (n,)
    int64 training indices; ``images`` (n, C, H, W); ``labels`` (n,) training labels with
    confirmed relabels applied; ``predictions`` (n,) the classifier's current classes;
    ``probabilities`` (n,) float32 membership probability of the region; ``evidence`` (n,);
    ``inside`` the number of training images the region reaches (any label).
    """

    region_id: int
    region_label: int
    min_probability: float
    indices: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    predictions: torch.Tensor
    probabilities: torch.Tensor
    inside: int
    evidence: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return (
            f"AuditResult(region {self.region_id} labeled {self.region_label}: {len(self)} "
            f"conflicting of {self.inside} training images with probability "
            f">= {self.min_probability})"
        )

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-friendly dict per image (no pixels): index, label, prediction, probability
        (membership)."""
        return [
            {"index": int(i), "label": int(lab), "prediction": int(p), "probability": float(q)}
            for i, lab, p, q in zip(
                self.indices.tolist(),
                self.labels.tolist(),
                self.predictions.tolist(),
                self.probabilities.tolist(),
            )
        ]


def select_conflicts(
    probability: torch.Tensor,
    labels: torch.Tensor,
    region_label: int,
    min_probability: float = 0.5,
    reached: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Indices of the rows inside a region whose label differs from the region's label.

    Parameters
    ----------
    probability : (N,) membership probability of the region for each training image.
    labels : (N,) training labels (relabels applied).
    region_label : the region's class.
    min_probability : a row is inside when its probability is at least this.
    reached : (N,) bool, optional: and when the region reaches it
        (:func:`~defuse_widgets.regions.membership.reach`).

    Returns
    -------
    indices (n,) int64 sorted by decreasing probability (ties by index), their probabilities (n,),
    and the number of rows inside the region.
    """
    check_probability(min_probability)
    if probability.shape != labels.shape:
        raise ValueError(
            f"probability: expected shape {tuple(labels.shape)} like labels, "
            f"got {tuple(probability.shape)}"
        )
    inside = probability >= min_probability
    if reached is not None:
        inside &= reached
    idx = (inside & (labels != region_label)).nonzero().flatten()
    p = probability[idx].float()
    order = _sort_desc(p, idx)
    return idx[order], p[order], int(inside.sum())


def _sort_desc(p: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Order by decreasing ``p``, exact ties by increasing ``idx``."""
    by_index = torch.argsort(idx, stable=True)
    return by_index[torch.argsort(-p[by_index], stable=True)]


def audit_region(
    region_id: int,
    region_label: int,
    probability: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    predict: Callable[[torch.Tensor], torch.Tensor],
    min_probability: float = 0.5,
    reached: torch.Tensor | None = None,
) -> AuditResult:
    """Build the :class:`AuditResult` of one region.

    ``probability`` (N,) is the region's membership probability of every training image,
    ``images`` (N, C, H, W) and ``labels`` (N,) the training set (relabels applied), and
    ``predict(images)`` returns (n, K) class probabilities of the classifier being debugged;
    ``reached`` (N,) bool: the rows the region reaches (see :func:`select_conflicts`).
    """
    idx, p, inside = select_conflicts(probability, labels, region_label, min_probability, reached)
    chosen, stored = images[idx], labels[idx].clone()
    if len(idx):
        proba = predict(chosen).cpu().float()
        preds = proba.argmax(1)
        evidence = 1 - proba.gather(1, stored[:, None]).squeeze(1)
    else:
        preds, evidence = torch.zeros(0, dtype=torch.long), torch.zeros(0)
    order = torch.argsort(-evidence, stable=True)  # ties keep select_conflicts' order
    return AuditResult(
        int(region_id),
        int(region_label),
        float(min_probability),
        idx[order],
        chosen[order],
        stored[order],
        preds[order],
        p[order],
        inside,
        evidence[order],
    )


def check_probability(value: float) -> None:
    """ValueError unless ``min_probability`` is a number in [0, 1]."""
    in_range("min_probability", value, 0, 1)


def gate(probability: torch.Tensor, inside: torch.Tensor | None) -> torch.Tensor:
    """The membership probability, zero outside the region's ellipsoid (``inside`` (N,) bool)."""
    return probability if inside is None else torch.where(inside, probability, 0.0)


def count_inside(
    probability: torch.Tensor,
    labels: torch.Tensor,
    relabeled: torch.Tensor,
    region_label: int,
    min_probability: float,
    reached: torch.Tensor | None = None,
) -> dict[str, int]:
    """The training images inside a region (and reached by it, ``reached`` (N,) bool): all of
    them, those whose label conflicts with the region's, and those relabeled (``relabeled`` (N,)
    bool)."""
    inside = probability >= min_probability
    if reached is not None:
        inside &= reached
    return {
        "label": region_label,
        "inside": int(inside.sum()),
        "conflicts": int((inside & (labels != region_label)).sum()),
        "relabeled": int((inside & relabeled).sum()),
    }


def ask_labeler(labeler: Labeler, images: torch.Tensor) -> torch.Tensor:
    """(n,) the classes ``labeler.label_images`` gives ``images`` (``UNRECOGNIZABLE``: none)."""
    if not len(images):
        return torch.zeros(0, dtype=torch.long)
    votes = torch.as_tensor(labeler.label_images(images)).cpu().long().flatten()
    if votes.shape != (len(images),):
        raise ValueError(f"labeler: returned {tuple(votes.shape)} labels for {len(images)} images")
    return votes


def walk_down(confirmed: torch.Tensor, stop_after: int | None) -> torch.Tensor:
    """(n,) bool: the ``confirmed`` rows met walking down the ranking, stopping after
    ``stop_after`` unconfirmed rows in a row (None: every row)."""
    if stop_after is None:
        return confirmed
    positive_int("stop_after", stop_after)
    out = torch.zeros_like(confirmed)
    out[: looked_at(confirmed, stop_after, len(confirmed))] = True
    return out & confirmed


def looked_at(confirmed: torch.Tensor, stop_after: int, n: int) -> int:
    """How many rows a walk that stops after ``stop_after`` misses in a row looks at."""
    misses = 0
    for i, ok in enumerate(confirmed.tolist()):
        misses = 0 if ok else misses + 1
        if misses >= stop_after:
            return i + 1
    return n
