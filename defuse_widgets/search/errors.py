"""The result of a latent search: :class:`ErrorSet`, one row per decode the model gets wrong."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

ERROR_FIELDS = (
    "codes",
    "source_index",
    "true_label",
    "pred_label",
    "confidence",
    "validity",
    "perturbation",
)


@dataclass(eq=False)
class ErrorSet:
    """Errors found by :func:`~defuse_widgets.search.identify.identify`: CPU tensors, one row per error.

    Attributes
    ----------
    codes : torch.Tensor
        (M, d) float32 latent codes whose decoded image the classifier gets wrong.
    source_index : torch.Tensor
        (M,) int64 index of the searched image each error came from.
    true_label, pred_label : torch.Tensor
        (M,) int64 true class of the source image and the class predicted for the decode.
    confidence : torch.Tensor
        (M,) float32 softmax probability of the predicted label.
    validity : torch.Tensor
        (M,) float32 in (0, 1]; see :func:`~defuse_widgets.validity_score`.
    perturbation : torch.Tensor
        (M, d) float32 ``codes - mu(source)``.
    settings : dict
        The search settings (strategy name and knobs, run options, seed, device, classes).
    images_searched, decodes : int
        Images searched and codes pushed through the decoder.
    seconds : float
        Wall time of the search.
    split : str
        The data split the images came from.
    """

    codes: torch.Tensor
    source_index: torch.Tensor
    true_label: torch.Tensor
    pred_label: torch.Tensor
    confidence: torch.Tensor
    validity: torch.Tensor
    perturbation: torch.Tensor
    settings: dict[str, Any] = field(default_factory=dict)
    images_searched: int = 0
    decodes: int = 0
    seconds: float = 0.0
    split: str = "test"

    def __len__(self) -> int:
        """Return the number of errors (rows)."""
        return len(self.codes)

    @property
    def latent_dim(self) -> int:
        """Size d of the latent codes."""
        return int(self.codes.shape[1])

    def tensors(self) -> dict[str, torch.Tensor]:
        """Return the per-error tensors by field name, in the order of ``ERROR_FIELDS``."""
        return {name: getattr(self, name) for name in ERROR_FIELDS}

    def subset(self, index: torch.Tensor) -> ErrorSet:
        """Return a new ErrorSet with the rows ``index`` (a bool mask or integer indices) selects.

        Parameters
        ----------
        index : torch.Tensor
            (M,) bool mask or (m,) int64 row indices.

        Returns
        -------
        ErrorSet
            The selected rows, with a copy of the settings and the same counts.
        """
        rows = {name: t[index] for name, t in self.tensors().items()}
        return ErrorSet(
            **rows,
            settings=dict(self.settings),
            images_searched=self.images_searched,
            decodes=self.decodes,
            seconds=self.seconds,
            split=self.split,
        )

    def transitions(self) -> dict[tuple[int, int], int]:
        """Count the (true, predicted) label pairs, most frequent first."""
        pairs = torch.stack([self.true_label, self.pred_label], 1)
        uniq, counts = pairs.unique(dim=0, return_counts=True)
        order = counts.argsort(descending=True)
        return {(int(uniq[i, 0]), int(uniq[i, 1])): int(counts[i]) for i in order}

    def __repr__(self) -> str:
        """Summarize the set: size, source split, strategy and decodes."""
        return (
            f"ErrorSet({len(self)} errors from {self.images_searched} {self.split} images, "
            f"strategy={self.settings.get('strategy')!r}, decodes={self.decodes})"
        )
