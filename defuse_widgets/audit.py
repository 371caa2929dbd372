"""Audit: training images inside a failure region that carry another label, and relabel records.

Pure functions over tensors plus small result objects; the
:class:`~defuse_widgets.session.DefuseSession` holds the state (the confirmed relabels) and
calls them.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

RELABELS_FORMAT = "defuse-widgets-relabels"
CSV_FIELDS = ("index", "old_label", "new_label", "who", "when")


@dataclass(frozen=True)
class Relabel:
    """One confirmed fix of a training label.

    ``index`` is the training image's index in ``data.x_train``; ``old_label`` its label in the
    dataset (never changed), ``new_label`` the confirmed class; ``who`` names the person or labeler,
    ``when`` is an ISO 8601 time.
    """

    index: int
    old_label: int
    new_label: int
    who: str
    when: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AuditResult:
    """Training images inside one region whose (relabeled) training label differs from its label.

    Rows are sorted so the likeliest mistakes come first (highest membership probability, then
    index). Attributes: ``indices`` (n,) int64 training indices; ``images`` (n, C, H, W);
    ``labels`` (n,) training labels with confirmed relabels applied; ``predictions`` (n,) the
    classifier's current classes; ``probabilities`` (n,) float32 membership probability of the
    region; ``inside`` the number of training images in the region (any label).
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

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return (
            f"AuditResult(region {self.region_id} labeled {self.region_label}: {len(self)} "
            f"conflicting of {self.inside} training images with probability "
            f">= {self.min_probability})"
        )

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-friendly dict per image (no pixels): index, label, prediction, probability."""
        return [
            {"index": int(i), "label": int(lab), "prediction": int(p), "probability": float(q)}
            for i, lab, p, q in zip(
                self.indices.tolist(), self.labels.tolist(), self.predictions.tolist(),
                self.probabilities.tolist(),
            )
        ]  # fmt: skip


def select_conflicts(
    probability: torch.Tensor, labels: torch.Tensor, region_label: int, min_probability: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Indices of the rows inside a region whose label differs from the region's label.

    Parameters
    ----------
    probability : (N,) membership probability of the region for each training image.
    labels : (N,) training labels (relabels applied).
    region_label : the region's class.
    min_probability : a row is inside when its probability is at least this.

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
    idx = (inside & (labels != region_label)).nonzero().flatten()
    p = probability[idx].float()
    order = _sort_desc(p, idx)
    return idx[order], p[order], int(inside.sum())


def _sort_desc(p: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Order by decreasing ``p``, exact ties by increasing ``idx``."""
    by_index = torch.argsort(idx, stable=True)
    return by_index[torch.argsort(-p[by_index], stable=True)]


def within_region(
    codes: torch.Tensor, mean: torch.Tensor, covariance: torch.Tensor, coverage: float
) -> torch.Tensor:
    """(N,) bool: the codes (N, d) inside the ellipsoid of N(mean, covariance) holding ``coverage``
    of its mass (squared Mahalanobis distance at most the chi-square quantile).

    The mixture's membership probability alone puts a code far from every error in its nearest
    region with probability near 1; this gate keeps the audit to codes the region really covers.
    """
    from scipy.stats import chi2

    from .distill import robust_cholesky

    if not 0 < coverage < 1:
        raise ValueError(f"coverage: expected a number in (0, 1) or None, got {coverage!r}")
    chol = robust_cholesky(covariance.double())
    diff = (codes.double() - mean.double()).T
    d2 = torch.linalg.solve_triangular(chol, diff, upper=False).pow(2).sum(0)
    return d2 <= float(chi2.ppf(coverage, codes.shape[1]))


def audit_region(
    region_id: int,
    region_label: int,
    probability: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    predict: Callable[[torch.Tensor], torch.Tensor],
    min_probability: float = 0.5,
) -> AuditResult:
    """Build the :class:`AuditResult` of one region.

    ``probability`` (N,) is the region's membership probability of every training image,
    ``images`` (N, C, H, W) and ``labels`` (N,) the training set (relabels applied), and
    ``predict(images)`` returns (n,) classes of the classifier being debugged.
    """
    idx, p, inside = select_conflicts(probability, labels, region_label, min_probability)
    chosen = images[idx]
    preds = predict(chosen) if len(idx) else torch.zeros(0, dtype=torch.long)
    return AuditResult(int(region_id), int(region_label), float(min_probability), idx, chosen,
                       labels[idx].clone(), preds.cpu().long(), p, inside)  # fmt: skip


def check_probability(value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError(f"min_probability: expected a number in [0, 1], got {value!r}")


def now_iso() -> str:
    """The current UTC time as ISO 8601, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def apply_relabels(labels: torch.Tensor, relabels: Iterable[Relabel]) -> torch.Tensor:
    """A copy of ``labels`` (N,) with every record's ``new_label`` at its ``index``."""
    out = labels.clone()
    records = list(relabels)
    if records:
        out[torch.tensor([r.index for r in records])] = torch.tensor([r.new_label for r in records])
    return out


def check_indices(indices: Any, n: int) -> torch.Tensor:
    """Training indices as a unique int64 tensor, all in [0, n); ValueError naming ``indices``."""
    try:
        idx = torch.as_tensor(indices)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(
            f"indices: expected a sequence of training indices, got {indices!r}"
        ) from exc
    if idx.numel() == 0:  # an empty list becomes a float tensor
        return torch.zeros(0, dtype=torch.long)
    if idx.dtype == torch.bool or idx.is_floating_point() or idx.is_complex():
        raise ValueError(f"indices: expected integer training indices, got dtype {idx.dtype}")
    idx = idx.long().flatten().unique()
    if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= n):
        bad = idx[(idx < 0) | (idx >= n)].tolist()[:5]
        raise ValueError(f"indices: expected training indices in [0, {n - 1}], got {bad}")
    return idx


# ----- export and import -----


def relabels_document(relabels: Iterable[Relabel], dataset: str, n_train: int,
                      classes: Iterable[str]) -> dict[str, Any]:  # fmt: skip
    """The JSON document of a set of relabels (sorted by index)."""
    return {
        "format": RELABELS_FORMAT,
        "version": 1,
        "dataset": dataset,
        "n_train": n_train,
        "classes": list(classes),
        "relabels": [r.to_dict() for r in sorted(relabels, key=lambda r: r.index)],
    }


def relabels_csv(relabels: Iterable[Relabel]) -> str:
    """CSV text with the header ``index,old_label,new_label,who,when``."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in sorted(relabels, key=lambda r: r.index):
        writer.writerow(r.to_dict())
    return buf.getvalue()


def read_relabel_source(source: str | os.PathLike | Mapping[str, Any]) -> list[dict[str, Any]]:
    """Raw records from a JSON document (a dict or a ``.json`` file) or a ``.csv`` file."""
    if isinstance(source, Mapping):
        return _records_from_document(source, "source")
    path = Path(source)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"source: cannot read relabels from {path} ({exc})") from exc
    if path.suffix.lower() == ".csv" or (
        path.suffix.lower() != ".json" and not text.lstrip().startswith("{")
    ):
        return _records_from_csv(text, path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"source: {path} is not valid JSON ({exc})") from exc
    if not isinstance(doc, Mapping):
        raise ValueError(f"source: {path} does not hold a {RELABELS_FORMAT!r} document")
    return _records_from_document(doc, str(path))


def _records_from_document(doc: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    if doc.get("format") != RELABELS_FORMAT or not isinstance(doc.get("relabels"), list):
        raise ValueError(
            f"source: {where} is not export_relabels() output (format {RELABELS_FORMAT!r})"
        )
    records = doc["relabels"]
    if not all(isinstance(r, Mapping) for r in records):
        raise ValueError(f"source: {where} has relabel entries that are not objects")
    return [dict(r) for r in records]


def _records_from_csv(text: str, path: Path) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or tuple(reader.fieldnames) != CSV_FIELDS:
        raise ValueError(
            f"source: {path} is not a relabels CSV; expected the header {','.join(CSV_FIELDS)}, "
            f"got {','.join(reader.fieldnames or [])!r}"
        )
    return [dict(row) for row in reader]


def validate_records(records: list[dict[str, Any]], y_train: torch.Tensor,
                     num_classes: int) -> dict[int, Relabel]:  # fmt: skip
    """Check raw records against the training labels and return them keyed by index.

    Each record needs an integer ``index`` in range whose ``old_label`` is the dataset's training
    label there (else the file was made for other data), a class ``new_label``, a ``who`` string
    and an ISO 8601 ``when``; an index may appear once.
    """
    out: dict[int, Relabel] = {}
    seen: set[int] = set()
    n = len(y_train)
    for line, rec in enumerate(records, start=1):
        where = f"relabel entry {line}"
        missing = [k for k in CSV_FIELDS if k not in rec or rec[k] is None]
        if missing:
            raise ValueError(f"source: {where} lacks {missing}")
        try:
            index, old, new = (_as_int(rec[k]) for k in ("index", "old_label", "new_label"))
        except ValueError as exc:
            raise ValueError(f"source: {where}: index and labels must be integers ({exc})") from exc
        if not 0 <= index < n:
            raise ValueError(
                f"source: {where}: index {index} is outside the training set [0, {n - 1}]"
            )
        if int(y_train[index]) != old:
            raise ValueError(
                f"source: {where}: old_label {old} at index {index} differs from the dataset's "
                f"training label {int(y_train[index])} (relabels made for other data?)"
            )
        if not 0 <= new < num_classes:
            raise ValueError(
                f"source: {where}: new_label {new} is not a class index in [0, {num_classes - 1}]"
            )
        when = str(rec["when"])
        try:
            datetime.fromisoformat(when)
        except ValueError as exc:
            raise ValueError(f"source: {where}: when {when!r} is not an ISO 8601 time") from exc
        if index in seen:
            raise ValueError(f"source: {where}: index {index} appears twice")
        seen.add(index)
        if new != old:
            out[index] = Relabel(index, old, new, str(rec["who"]), when)
    return out


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{value!r}")
    return int(value)
