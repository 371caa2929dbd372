"""The regression suite's files: its format, and reading a suite back, checked (never unpickled).

See :mod:`defuse_widgets.suite.export` for the layout of a suite directory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from defuse_widgets.data.dataset import ImageDataset

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


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the suite at ``path``, its format and version checked."""
    file = path / MANIFEST
    if not path.is_dir() or not file.is_file():
        raise ValueError(
            f"path: expected a suite directory written by export_tests (with {MANIFEST}), "
            f"got {path}"
        )
    try:
        doc = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"path: {file} is damaged, not JSON ({exc}); export the suite again"
        ) from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"path: expected a {FORMAT!r} manifest in {path}, got format {got!r}")
    if doc.get("version") != VERSION:
        raise ValueError(
            f"path: expected suite format version {VERSION}, got {doc.get('version')!r}; "
            "use the defuse-widgets version that wrote it, or export it again"
        )
    return doc


def load_suite(path: str | os.PathLike, data: ImageDataset | None = None) -> Suite:
    """Read and check a suite directory (never unpickles).

    Parameters
    ----------
    path : a directory written by :func:`export_suite`.
    data : when given, the suite must have been exported from this dataset (same fingerprint).

    Raises
    ------
    ValueError
        For a missing, foreign or damaged suite, or one from another dataset.
    """
    path = Path(path)
    doc = read_manifest(path)
    try:
        shape = tuple(int(v) for v in doc["image_shape"])
        classes = [str(c) for c in doc["classes"]]
        entries = list(doc["regions"])
        regions = [_load_region(path, entry, shape, len(classes)) for entry in entries]
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith("path:"):
            raise
        raise ValueError(
            f"path: the suite in {path} is damaged ({exc!r}); export it again"
        ) from exc
    if not regions:
        raise ValueError(f"path: the suite in {path} has no regions; export it again")
    if data is not None:
        _check_dataset(path, doc, data)
    return Suite(path, doc, regions)


def _load_region(path: Path, entry: dict[str, Any], shape: tuple[int, ...], k: int) -> SuiteRegion:
    file = path / str(entry["file"])
    if Path(entry["file"]).name != entry["file"] or not file.is_file():
        raise ValueError(f"path: the suite in {path} lacks {entry['file']}; export it again")
    if sha256(file) != entry["sha256"]:
        raise ValueError(
            f"path: {file} is damaged (its SHA-256 differs from the manifest's); export it again"
        )
    try:
        t = load_file(str(file))
    except SafetensorError as exc:
        raise ValueError(f"path: {file} is damaged ({exc}); export it again") from exc
    samples, real, real_labels = t["samples"], t["real"], t["real_labels"]
    label = int(entry["label"])
    ok = (
        tuple(samples.shape[1:]) == shape
        and len(samples) == int(entry["samples"]) > 0
        and (len(real) == 0 or tuple(real.shape[1:]) == shape)
        and len(real) == len(real_labels) == int(entry["real"])
        and 0 <= label < k
        and all(0 <= int(v) < k for v in real_labels)
    )
    if not ok:
        raise ValueError(f"path: {file} does not match the manifest; export the suite again")
    return SuiteRegion(
        int(entry["id"]),
        label,
        str(entry["label_name"]),
        _unit(entry["min_accuracy"]),
        _unit(entry["min_real_accuracy"]),
        samples.float(),
        real.float(),
        real_labels.long(),
    )


def _unit(value: Any) -> float:
    out = float(value)
    if not 0 <= out <= 1 or math.isnan(out):
        raise ValueError(f"threshold {value!r} is not in [0, 1]")
    return out


def _check_dataset(path: Path, doc: dict[str, Any], data: ImageDataset) -> None:
    from defuse_widgets.persist.write import dataset_fingerprint

    if not isinstance(data, ImageDataset):
        raise TypeError(f"data: expected an ImageDataset or None, got {type(data).__name__}")
    theirs, ours = doc.get("dataset"), dataset_fingerprint(data)
    if theirs != ours:
        name = theirs.get("name") if isinstance(theirs, dict) else None
        raise ValueError(
            f"data: the suite in {path} was exported from another dataset ({name!r}, fingerprint "
            f"{theirs}), not from {data.name!r} ({ours}); check the model against its own suite"
        )
