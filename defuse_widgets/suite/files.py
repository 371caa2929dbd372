"""The regression suite's files: its format, and reading a suite back, checked (never unpickled).

See :mod:`defuse_widgets.suite.export` for the layout of a suite directory.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from defuse_widgets.data.dataset import ImageDataset
from defuse_widgets.data.fingerprint import dataset_fingerprint, fingerprint_matches
from defuse_widgets.utils.manifest import ManifestError, read_manifest
from defuse_widgets.utils.tensorfiles import parse_safetensors

FORMAT = "defuse-widgets-suite"
VERSION = 1
MANIFEST = "manifest.json"


@dataclass
class SuiteRegion:
    """One region of a suite: its label, thresholds and images (all on the CPU).

    ``samples`` (n, C, H, W) all carry ``label``; ``real`` (m, C, H, W) carry ``real_labels``
    (m,), their own dataset labels.
    """

    id: int
    label: int
    label_name: str
    min_accuracy: float
    min_real_accuracy: float
    samples: torch.Tensor
    real: torch.Tensor
    real_labels: torch.Tensor


@dataclass
class Suite:
    """A suite read by :func:`load_suite`: its manifest and its regions."""

    path: Path
    manifest: dict[str, Any]
    regions: list[SuiteRegion]

    @property
    def classes(self) -> list[str]:
        """The class names, index = class."""
        return list(self.manifest["classes"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image in the suite."""
        c, h, w = self.manifest["image_shape"]
        return (int(c), int(h), int(w))


def sha256(path: Path) -> str:
    """The hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


class SuiteFileError(ValueError):
    """A field of a suite's manifest, or one of its tensor files, is missing or damaged."""


def read_suite_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the suite at ``path``, its format and version checked."""
    try:
        return read_manifest(path, MANIFEST, FORMAT, (VERSION,))
    except ManifestError as exc:
        raise ValueError(
            f"path: expected a suite directory written by export_tests, got {path}: {exc.why}; "
            "export the suite again"
        ) from exc


def load_suite(path: str | os.PathLike, data: ImageDataset | None = None) -> Suite:
    """Read and check a suite directory (never unpickles).

    Parameters
    ----------
    path : a directory written by :func:`export_suite`.
    data : when given, the suite must have been exported from this dataset (same fingerprint).

    Raises
    ------
    ValueError
        For a missing, foreign or damaged suite (naming the file and the field), or one from
        another dataset.
    """
    if data is not None and not isinstance(data, ImageDataset):
        raise TypeError(f"data: expected an ImageDataset or None, got {type(data).__name__}")
    path = Path(path)
    doc = read_suite_manifest(path)
    try:
        shape = _image_shape(doc)
        classes = _field(doc, "classes", list, "a list of class names")
        if not classes or not all(isinstance(c, str) for c in classes):
            raise SuiteFileError(f"{MANIFEST}: field 'classes': expected a list of class names")
        entries = _field(doc, "regions", list, "a list of regions")
        regions = [
            _load_region(path, i, entry, shape, len(classes)) for i, entry in enumerate(entries)
        ]
    except SuiteFileError as exc:
        raise ValueError(f"path: the suite in {path} is damaged: {exc}; export it again") from exc
    if not regions:
        raise ValueError(
            f"path: the suite in {path} has no regions ({MANIFEST}: field 'regions' is empty); "
            "export it again"
        )
    ids = [r.id for r in regions]
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"path: the suite in {path} is damaged: {MANIFEST}: field 'regions' names a region "
            f"twice ({ids}); export it again"
        )
    if data is not None:
        _check_dataset(path, doc, data)
    return Suite(path, doc, regions)


def _field(doc: Any, key: str, kind: type | tuple[type, ...], what: str, where: str = "") -> Any:
    """``doc[key]``, checked to be a ``kind``; :class:`SuiteFileError` naming the field."""
    name = f"{where}.{key}" if where else key
    if not isinstance(doc, dict) or key not in doc:
        raise SuiteFileError(f"{MANIFEST}: field {name!r} is missing")
    value = doc[key]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        value = None  # true/false is not a number here
    if not isinstance(value, kind):
        shown = repr(doc[key]) if len(repr(doc[key])) <= 40 else repr(doc[key])[:37] + "..."
        raise SuiteFileError(f"{MANIFEST}: field {name!r}: expected {what}, got {shown}")
    return value


def _image_shape(doc: dict[str, Any]) -> tuple[int, int, int]:
    shape = _field(doc, "image_shape", list, "[channels, height, width]")
    if len(shape) != 3 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape
    ):
        raise SuiteFileError(
            f"{MANIFEST}: field 'image_shape': expected [channels, height, width], got {shape!r}"
        )
    return (shape[0], shape[1], shape[2])


def _load_region(path: Path, i: int, entry: Any, shape: tuple[int, ...], k: int) -> SuiteRegion:
    where = f"regions[{i}]"
    name = _field(entry, "file", str, "a file name", where)
    file = path / name
    if not name or Path(name).name != name or not file.is_file():
        raise SuiteFileError(f"it lacks {name} (field '{where}.file')")
    data = file.read_bytes()
    if hashlib.sha256(data).hexdigest() != _field(entry, "sha256", str, "a hex digest", where):
        raise SuiteFileError(
            f"{name} is damaged (its SHA-256 differs from the manifest's field '{where}.sha256')"
        )
    tensors, why = parse_safetensors(data)
    if tensors is None:
        raise SuiteFileError(f"{name} {why}")
    missing = {"samples", "real", "real_labels"} - set(tensors)
    if missing:
        raise SuiteFileError(f"{name} lacks the tensors {sorted(missing)}")
    samples, real, real_labels = tensors["samples"], tensors["real"], tensors["real_labels"]
    label = _field(entry, "label", int, "a class index", where)
    n, m = (_field(entry, key, int, "a count", where) for key in ("samples", "real"))
    if not 0 <= label < k:
        raise SuiteFileError(f"{MANIFEST}: field '{where}.label': expected a class in [0, {k})")
    ok = (
        samples.dim() == 4
        and tuple(samples.shape[1:]) == shape
        and len(samples) == n > 0
        and real.dim() == 4
        and (len(real) == 0 or tuple(real.shape[1:]) == shape)
        and real_labels.dim() == 1
        and len(real) == len(real_labels) == m
        and not real_labels.is_floating_point()
        and bool(((real_labels >= 0) & (real_labels < k)).all())
        and samples.is_floating_point()
        and real.is_floating_point()
    )
    if not ok:
        raise SuiteFileError(
            f"{name} does not match the manifest (fields '{where}.samples', '{where}.real', "
            f"'image_shape', 'classes'): samples {tuple(samples.shape)}, real "
            f"{tuple(real.shape)}, real_labels {tuple(real_labels.shape)}"
        )
    return SuiteRegion(
        _field(entry, "id", int, "an integer", where),
        label,
        _field(entry, "label_name", str, "a string", where),
        _unit(entry, "min_accuracy", where),
        _unit(entry, "min_real_accuracy", where),
        samples.float(),
        real.float(),
        real_labels.long(),
    )


def _unit(entry: dict[str, Any], key: str, where: str) -> float:
    out = float(_field(entry, key, (int, float), "a number in [0, 1]", where))
    if math.isnan(out) or not 0 <= out <= 1:
        raise SuiteFileError(
            f"{MANIFEST}: field '{where}.{key}': expected a number in [0, 1], got {out!r}"
        )
    return out


def _check_dataset(path: Path, doc: dict[str, Any], data: ImageDataset) -> None:
    theirs = doc.get("dataset")
    if not fingerprint_matches(data, theirs):
        ours = dataset_fingerprint(data)
        name = theirs.get("name") if isinstance(theirs, dict) else None
        raise ValueError(
            f"data: the suite in {path} was exported from another dataset ({name!r}, fingerprint "
            f"{theirs}), not from {data.name!r} ({ours}); check the model against its own suite"
        )
