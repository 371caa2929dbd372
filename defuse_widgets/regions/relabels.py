"""Relabels: confirmed fixes of training labels, their store, and their JSON/CSV files.

The dataset is never changed: :class:`RelabelStore` keeps the confirmed records and
:meth:`RelabelStore.apply` gives the training labels with them applied.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from defuse_widgets.utils.checks import InstanceOf, Interval, check

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


def relabels_document(
    relabels: Iterable[Relabel], dataset: str, n_train: int, classes: Iterable[str]
) -> dict[str, Any]:
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


def validate_records(
    records: list[dict[str, Any]], y_train: torch.Tensor, num_classes: int
) -> dict[int, Relabel]:
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


class RelabelStore:
    """The confirmed relabels of one training set, keyed by training index.

    Parameters
    ----------
    y_train : (N,) int64 the dataset's training labels (never changed).
    num_classes : the number of classes a new label may take.
    """

    def __init__(self, y_train: torch.Tensor, num_classes: int):
        self.y_train = y_train
        self.num_classes = num_classes
        self.records: dict[int, Relabel] = {}

    def __len__(self) -> int:
        return len(self.records)

    def apply(self) -> torch.Tensor:
        """(N,) the training labels with every relabel applied (a new tensor)."""
        return apply_relabels(self.y_train, self.records.values())

    def mask(self) -> torch.Tensor:
        """(N,) bool, True at the relabeled training images."""
        out = torch.zeros(len(self.y_train), dtype=torch.bool)
        if self.records:
            out[torch.tensor(list(self.records))] = True
        return out

    def set(self, indices: Any, label: int, who: str) -> int:
        """Record that the images ``indices`` are class ``label``; returns the records changed.

        Relabeling an image to its dataset label removes its relabel.
        """
        idx = check_indices(indices, len(self.y_train))
        check("label", label, [Interval(int, 0, self.num_classes - 1)])
        check("who", who, [InstanceOf(str, "a string naming the person or labeler")])
        when, changed = now_iso(), 0
        for i in idx.tolist():
            old = int(self.y_train[i])
            current = self.records.get(i)
            if label == old:
                changed += self.records.pop(i, None) is not None
            elif current is None or current.new_label != label:
                self.records[i] = Relabel(i, old, label, who, when)
                changed += 1
        return changed

    def remove(self, indices: Any) -> int:
        """Undo the relabels of the images ``indices`` (none is fine); returns how many went."""
        idx = check_indices(indices, len(self.y_train))
        return sum(self.records.pop(i, None) is not None for i in idx.tolist())

    def load(self, records: list[dict[str, Any]], replace: bool = True) -> int:
        """Replace (or merge over) the relabels with raw records, all checked first."""
        valid = validate_records(records, self.y_train, self.num_classes)
        self.records = valid if replace else {**self.records, **valid}
        return len(self.records)

    def document(self, dataset: str, classes: Iterable[str]) -> dict[str, Any]:
        """The relabels as a JSON-ready :data:`RELABELS_FORMAT` document."""
        return relabels_document(self.records.values(), dataset, len(self.y_train), classes)

    def write(self, path: str | os.PathLike, doc: dict[str, Any], format: str | None) -> None:
        """Write ``doc`` to ``path``: CSV when ``format`` is "csv" or the path ends in .csv."""
        as_csv = format == "csv" or (format is None and str(path).lower().endswith(".csv"))
        text = relabels_csv(self.records.values()) if as_csv else json.dumps(doc, indent=1)
        Path(path).write_text(text)
