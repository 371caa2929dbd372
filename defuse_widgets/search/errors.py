"""The result of a latent search: :class:`ErrorSet`, one row per decode the model gets wrong."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from defuse_widgets.utils.checks import one_of
from defuse_widgets.utils.tables import Table, class_label

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
    """Errors found by :func:`~defuse_widgets.search.identify.identify`: CPU tensors, one row per
    error.

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

    def to_table(self, classes: Sequence[str] | None = None, by: str = "class") -> Table:
        """The errors as a :class:`~defuse_widgets.utils.tables.Table`.

        Parameters
        ----------
        classes : sequence of str or None
            Class names (e.g. ``data.classes``); None shows class indices.
        by : {"class", "source", "error"}
            ``"class"``: one row per true class (errors, source images with an error, the most
            common predicted class and its count, mean confidence and validity); ``"source"``:
            one row per searched image with an error (its ``source_index``, true class, errors,
            the most common prediction, the highest confidence); ``"error"``: one row per error
            (``error``, ``source_index``, ``true``, ``predicted``, ``confidence``,
            ``validity``).
        """
        one_of("by", by, ("class", "source", "error"))
        if by == "error":
            return error_table(self, classes)
        return source_table(self, classes) if by == "source" else class_table(self, classes)

    def to_pandas(self, classes: Sequence[str] | None = None, by: str = "error") -> Any:
        """:meth:`to_table` as a ``pandas.DataFrame`` (default one row per error; needs pandas)."""
        return self.to_table(classes, by).to_pandas()

    def _repr_html_(self) -> str:
        return self.to_table().to_html()


def _title(errors: ErrorSet) -> str:
    return (
        f"{len(errors)} errors from {errors.images_searched} {errors.split} images "
        f"(strategy {errors.settings.get('strategy')!r}, {errors.decodes} decodes)"
    )


def class_table(errors: ErrorSet, classes: Sequence[str] | None = None) -> Table:
    """One row per true class that has an error: counts, the commonest mistake, mean scores."""
    rows: list[list[Any]] = []
    for c in errors.true_label.unique().tolist():
        mask = errors.true_label == c
        preds, counts = errors.pred_label[mask].unique(return_counts=True)
        top = int(counts.argmax())
        rows.append(
            [
                class_label(c, classes),
                int(mask.sum()),
                len(errors.source_index[mask].unique()),
                class_label(int(preds[top]), classes),
                int(counts[top]),
                float(errors.confidence[mask].mean()),
                float(errors.validity[mask].mean()),
            ]
        )
    rows.sort(key=lambda r: -r[1])
    columns = [
        "true class",
        "errors",
        "images with an error",
        "most common prediction",
        "its errors",
        "mean confidence",
        "mean validity",
    ]
    return Table(columns, rows, title=_title(errors))


def source_table(errors: ErrorSet, classes: Sequence[str] | None = None) -> Table:
    """One row per source image with an error, most errors first."""
    rows: list[list[Any]] = []
    for src in errors.source_index.unique().tolist():
        mask = errors.source_index == src
        preds, counts = errors.pred_label[mask].unique(return_counts=True)
        rows.append(
            [
                src,
                class_label(int(errors.true_label[mask][0]), classes),
                int(mask.sum()),
                class_label(int(preds[counts.argmax()]), classes),
                float(errors.confidence[mask].max()),
            ]
        )
    rows.sort(key=lambda r: -r[2])
    columns = ["source_index", "true class", "errors", "most common prediction", "max confidence"]
    return Table(columns, rows, title=_title(errors))


def error_table(errors: ErrorSet, classes: Sequence[str] | None = None) -> Table:
    """One row per error: its index, source image, true and predicted class, scores."""
    columns = ["error", "source_index", "true", "predicted", "confidence", "validity"]
    rows = [
        [i, s, class_label(t, classes), class_label(p, classes), c, v]
        for i, (s, t, p, c, v) in enumerate(
            zip(
                errors.source_index.tolist(),
                errors.true_label.tolist(),
                errors.pred_label.tolist(),
                errors.confidence.tolist(),
                errors.validity.tolist(),
            )
        )
    ]
    return Table(columns, rows, title=_title(errors))
