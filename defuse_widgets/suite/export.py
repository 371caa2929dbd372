"""Failure regions as regression tests: export a suite directory from regions and a model.

:func:`export_suite` takes what it exports explicitly (a :class:`SuiteSource`: the regions, their
labels, the decode and predict functions, the dataset and, for real images, the test codes and
their region probabilities); ``DefuseSession.export_tests`` fills one in from a session.

A suite is a directory that runs without the generator or the session::

    manifest.json               format, version, dataset fingerprint, shapes, classes, regions
    region-<id>.safetensors     samples (n, C, H, W) float32 decoded from the region's evaluation
                                stream and their codes (n, d); real (m, C, H, W) test images
                                inside the region, real_labels (m,) and real_index (m,)
    region-<id>.png             a contact sheet for people: the samples, then the real images

Every tensor file's SHA-256 is in the manifest, so a damaged file is found before a model runs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from defuse_widgets._version import __version__
from defuse_widgets.data.dataset import ImageDataset
from defuse_widgets.data.fingerprint import dataset_fingerprint
from defuse_widgets.imaging import png_bytes, sprite_sheet, to_uint8
from defuse_widgets.regions.distill import SAMPLE_STREAMS, RegionSet, check_scale, derive_seed
from defuse_widgets.regions.labels import label_name
from defuse_widgets.regions.membership import COVERAGE, MIN_PROBABILITY, members
from defuse_widgets.suite.files import FORMAT, MANIFEST, VERSION, read_suite_manifest, sha256
from defuse_widgets.utils.checks import in_range, positive_int

DEFAULT_SAMPLES = 200  # the same held-out draws as DefuseSession.evaluate()
DEFAULT_MIN_ACCURACY = 0.8
SHEET_COLUMNS = 16


@dataclass(frozen=True)
class SuiteSource:
    """What a suite is exported from.

    Attributes
    ----------
    regions : the region set (its mixture gives each region's samples).
    labels : region id -> class label, for the regions that may be exported.
    decode : codes (n, d) -> images (n, C, H, W), on the CPU.
    predict : images (n, C, H, W) -> class probabilities (n, K) of the model the suite is
        exported for (the exported accuracies are its figures).
    data : the dataset: class names, image shape, test images and labels, fingerprint.
    test_codes : (N_test, d) encoder means of ``data.x_test``; needed for real images only.
    test_probability : (N_test, R) probability that the mixture puts each test image in each
        region (columns in ``regions.regions`` order); needed for real images only.
    round : the fine-tuning round of the model, recorded in the manifest.
    """

    regions: RegionSet
    labels: Mapping[int, int]
    decode: Callable[[torch.Tensor], torch.Tensor]
    predict: Callable[[torch.Tensor], torch.Tensor]
    data: ImageDataset
    test_codes: torch.Tensor | None = None
    test_probability: torch.Tensor | None = None
    round: int = 0


def export_suite(
    source: SuiteSource,
    path: str | os.PathLike,
    regions: Sequence[int] | None = None,
    samples: int = DEFAULT_SAMPLES,
    min_accuracy: float | Mapping[int, float] = DEFAULT_MIN_ACCURACY,
    include_real: bool = True,
    min_real_accuracy: float | None = None,
    scale: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Write class-labeled regions as a regression suite directory.

    Parameters
    ----------
    source : the regions, their labels, the models and the data (see :class:`SuiteSource`).
    path : the directory to write (its parents are made); it must not exist or be empty (or,
        with ``overwrite``, hold an earlier suite, which is replaced).
    regions : region ids to export (each labeled with a class); None: every class-labeled region.
    samples : decoded samples per region, from its evaluation stream (never trained on).
    min_accuracy : the accuracy a model must reach on a region's samples, in [0, 1]; one number
        or a mapping region id -> number.
    include_real : also store the real test images inside each region (membership probability
        > 0.5 and inside the ellipsoid holding 99% of the region's Gaussian), with their labels.
    min_real_accuracy : the accuracy a model must reach on a region's real images (None: the
        region's ``min_accuracy``); a region without real images is judged on its samples.
    scale : sampling scale of N(mean, scale x covariance); None: the default (1.0).
    overwrite : replace an earlier suite at ``path``.

    Returns
    -------
    Path
        The suite directory.
    """
    chosen = check_export(
        source.regions,
        source.labels,
        path,
        regions,
        samples,
        min_accuracy,
        min_real_accuracy,
        overwrite,
    )
    scale = check_scale(scale)
    if include_real and (source.test_codes is None or source.test_probability is None):
        raise ValueError(
            "source: include_real needs the test codes and their region probabilities "
            "(test_codes, test_probability), got none"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".suite-", dir=path.parent))
    try:
        entries = [
            _write_region(source, tmp, rid, label, samples, scale, include_real)
            for rid, label in chosen.items()
        ]
        for entry in entries:
            entry["min_accuracy"] = _threshold(min_accuracy, entry["id"])
            real_min = entry["min_accuracy"] if min_real_accuracy is None else min_real_accuracy
            entry["min_real_accuracy"] = float(real_min)
        manifest = _manifest(source, samples, scale, include_real, entries)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if path.exists():
            shutil.rmtree(path)
        tmp.replace(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def check_export(
    region_set: RegionSet | None,
    labels: Mapping[int, int],
    path: str | os.PathLike,
    regions: Sequence[int] | None,
    samples: int,
    min_accuracy: float | Mapping[int, float],
    min_real_accuracy: float | None,
    overwrite: bool,
) -> dict[int, int]:
    """The regions to export (id -> class label); every argument of :func:`export_suite` is
    checked, and nothing is written.

    ``region_set`` and ``labels`` (region id -> label; only class labels, >= 0, are exported)
    are the source's; the others are :func:`export_suite`'s."""
    if region_set is None:
        raise RuntimeError("no regions yet: call identify() and distill(), then label regions")
    positive_int("samples", samples)
    labeled = {int(rid): int(lab) for rid, lab in labels.items() if lab >= 0}
    if regions is None:
        chosen = dict(sorted(labeled.items()))
        if not chosen:
            raise ValueError(
                "regions: no region is labeled with a class; label regions (s.label(id, class)) "
                "before exporting tests"
            )
    else:
        chosen = {}
        for rid in regions:
            region_set.get(rid)
            if int(rid) not in labeled:
                raise ValueError(
                    f"regions: expected regions labeled with a class, got region {rid} "
                    f"(labeled with a class: {sorted(labeled)}); label it first"
                )
            chosen[int(rid)] = labeled[int(rid)]
        if not chosen:
            raise ValueError("regions: expected at least one region id, got none")
    for rid in chosen:
        _threshold(min_accuracy, rid)
    if min_real_accuracy is not None:
        in_range("min_real_accuracy", min_real_accuracy, 0, 1)
    _check_target(Path(path), overwrite)
    return chosen


def _threshold(min_accuracy: float | Mapping[int, float], region_id: int) -> float:
    if isinstance(min_accuracy, Mapping):
        if region_id not in min_accuracy:
            raise ValueError(
                f"min_accuracy: expected a threshold for every exported region, got none for "
                f"region {region_id}; give one number or a value per region"
            )
        return in_range("min_accuracy", min_accuracy[region_id], 0, 1)
    return in_range("min_accuracy", min_accuracy, 0, 1)


def _check_target(path: Path, overwrite: bool) -> None:
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"path: expected a directory path, got {path} (inside the file {parent})")
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    if not path.is_dir():
        raise ValueError(f"path: expected a directory, got the file {path}")
    if not overwrite:
        raise ValueError(
            f"path: expected a new or empty directory, got {path} with files in it; "
            "pass overwrite=True to replace an earlier suite there"
        )
    if not (path / MANIFEST).is_file() or read_suite_manifest(path).get("format") != FORMAT:
        raise ValueError(
            f"path: {path} holds files that are not a defuse-widgets suite; overwrite only "
            "replaces a suite, choose another directory"
        )


def _write_region(
    source: SuiteSource,
    folder: Path,
    region_id: int,
    label: int,
    samples: int,
    scale: float,
    include_real: bool,
) -> dict[str, Any]:
    """Write one region's tensors and sheet; returns its manifest entry (thresholds added later)."""
    regions, data = source.regions, source.data
    region = regions.get(region_id)
    codes = regions.sample_codes(region_id, samples, scale, purpose="eval")
    images = source.decode(codes).float()
    predictions = source.predict(images).argmax(1)
    real_index = torch.zeros(0, dtype=torch.long)
    if include_real:
        assert source.test_codes is not None  # checked by export_suite
        real_index = members(
            regions, source.test_codes, region_id, probability=source.test_probability
        )
    real = data.x_test[real_index].float()
    real_labels = data.y_test[real_index].long()
    tensors = {
        "samples": images.contiguous(),
        "sample_codes": codes.float().contiguous(),
        "real": real.contiguous(),
        "real_labels": real_labels.contiguous(),
        "real_index": real_index.long().contiguous(),
    }
    name = f"region-{region_id}"
    save_file(tensors, str(folder / f"{name}.safetensors"))
    sheet = contact_sheet(images, real)
    (folder / f"{name}.png").write_bytes(png_bytes(sheet, scale=_sheet_scale(real.shape[-1])))
    real_pred = source.predict(real).argmax(1) if len(real) else real_labels
    return {
        "id": int(region_id),
        "label": int(label),
        "label_name": label_name(label, data.classes),
        "transition": list(region.transition),
        "weight": float(region.weight),
        "size": int(region.size),
        "samples": int(samples),
        "real": len(real),
        "stream_seed": derive_seed(regions.seed, region_id, SAMPLE_STREAMS["eval"], 0),
        "file": f"{name}.safetensors",
        "sha256": sha256(folder / f"{name}.safetensors"),
        "sheet": f"{name}.png",
        "exported_accuracy": float((predictions == label).float().mean()),
        "exported_real_accuracy": _accuracy(real_pred, real_labels),
    }


def contact_sheet(samples: torch.Tensor, real: torch.Tensor) -> np.ndarray:
    """uint8 (H', W', C): the samples in rows of ``SHEET_COLUMNS``, then the real images."""
    parts = [to_uint8(samples)]
    if len(real):
        pad = (-len(samples)) % SHEET_COLUMNS + SHEET_COLUMNS  # one blank row between them
        parts += [np.zeros((pad, *parts[0].shape[1:]), np.uint8), to_uint8(real)]
    return sprite_sheet(np.concatenate(parts), columns=SHEET_COLUMNS)


def _sheet_scale(side: int) -> int:
    return max(1, 32 // max(1, side))


def _accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float | None:
    return float((pred == labels).float().mean()) if len(labels) else None


def _manifest(
    source: SuiteSource,
    samples: int,
    scale: float,
    include_real: bool,
    entries: list[dict[str, Any]],
) -> dict[str, Any]:
    data = source.data
    return {
        "format": FORMAT,
        "version": VERSION,
        "created_by": f"defuse-widgets {__version__}",
        "dataset": dataset_fingerprint(data),
        "image_shape": list(data.image_shape),
        "classes": list(data.classes),
        "exported_round": int(source.round),
        "sampling": {
            "distribution": "N(mean, scale x covariance) of the region's mixture component",
            "seed": int(source.regions.seed),
            "stream": "eval",
            "stream_id": SAMPLE_STREAMS["eval"],
            "samples": int(samples),
            "scale": float(scale),
        },
        "real_images": {
            "included": bool(include_real),
            "split": "test",
            "rule": f"membership probability >= {MIN_PROBABILITY:g} and inside {COVERAGE:g} "
            "of the Gaussian",
        },
        "regions": entries,
    }
