"""Read and check a saved session's directory into a ``state_dict()``-shaped state
(safetensors only, never unpickled).

:func:`read_session` reads and checks every file and field before it returns, so the caller
(``DefuseSession.load``) builds a session only from a state known to be whole.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defuse_widgets.correction.evaluation import RoundRecord
from defuse_widgets.data.dataset import ImageDataset
from defuse_widgets.data.fingerprint import fingerprint_matches
from defuse_widgets.data.loaders import load_dataset
from defuse_widgets.persist.schema import FORMAT, READS, FieldError, check_document
from defuse_widgets.regions.distill import Region, RegionSet
from defuse_widgets.regions.labels import check_labels
from defuse_widgets.regions.mixture import Mixture
from defuse_widgets.regions.relabels import validate_records
from defuse_widgets.search.errors import ERROR_FIELDS, ErrorSet
from defuse_widgets.utils.atomic import check_entry, leftovers
from defuse_widgets.utils.manifest import ManifestError, read_manifest
from defuse_widgets.utils.tensorfiles import not_safetensors, parse_safetensors

MANIFEST = "session.json"


def fail(path: Path, why: str) -> ValueError:
    """The error for a directory that is not a loadable session, saying why."""
    return ValueError(f"{path} is not a loadable defuse-widgets session: {why}")


def as_directory(path: Any) -> Path:
    """``path`` as a Path; a clear error for anything that is not a path (None, a number)."""
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)) or not str(path):
        raise TypeError(
            f"path: expected a directory path (a non-empty str or os.PathLike), got {path!r}"
        )
    return Path(path)


@dataclass
class SavedSession:
    """A saved session read back and checked: what ``DefuseSession.load`` builds itself from.

    ``state`` has the keys of ``DefuseSession.state_dict()``; ``data`` is the dataset it was
    checked against; ``validation`` the fraction the save recorded (None: none, or the user's
    pair); ``stale`` the files an interrupted later save left beside it.
    """

    path: Path
    state: dict[str, Any]
    data: ImageDataset
    validation: float | None
    saved_at: str
    stale: list[str] = field(default_factory=list)

    def warn_stale(self) -> None:
        """Warn about the files of an interrupted later save (call once the load succeeded)."""
        if self.stale:
            warnings.warn(
                f"{self.path}: loaded the complete save of {self.saved_at}; ignored "
                f"{len(self.stale)} file(s) left by an interrupted save "
                f"({', '.join(self.stale)}), which the next save to this directory removes",
                stacklevel=3,
            )


def read_session(
    path: str | os.PathLike, classifier: nn.Module, latent_dim: int, data: ImageDataset | None
) -> SavedSession:
    """Read and check a directory written by :func:`~defuse_widgets.persist.write.save_state`
    (any format version this release reads).

    Parameters
    ----------
    path : the saved directory.
    classifier : the module the weights are for; only its parameter names and shapes are read
        (it is not changed).
    latent_dim : the generator's latent size d.
    data : the dataset the session was made on; None loads the bundled one it names (digits).

    Raises
    ------
    ValueError
        Naming the directory, the file and the field that is missing, damaged or inconsistent.
    """
    path = as_directory(path)
    try:
        doc = read_manifest(path, MANIFEST, FORMAT, READS)
    except ManifestError as exc:
        raise fail(path, exc.why) from exc
    try:
        check_document(doc, doc["version"])
    except FieldError as exc:
        raise fail(
            path,
            f"session.json is incomplete or inconsistent: {exc}; restore it from a copy or save "
            "the session again",
        ) from exc
    files = file_entries(doc)
    try:
        state, data = read_state(path, doc, files, classifier, latent_dim, data)
    except (KeyError, TypeError, IndexError) as exc:
        raise fail(path, f"session.json is incomplete or inconsistent ({exc!r})") from exc
    return SavedSession(
        path=path,
        state=state,
        data=data,
        validation=doc.get("validation"),
        saved_at=str(doc.get("saved_at", "an earlier version")),
        stale=leftovers(path, keep={e["name"] for e in files.values()}),
    )


def file_entries(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Data file key -> manifest entry; version 1 entries have fixed names and no checksum."""
    if doc["version"] >= 2:
        return dict(doc["files"])
    keys = ["weights"] + [k for k in ("errors", "regions") if doc[k] is not None]
    return {key: {"name": f"{key}.safetensors"} for key in keys}


def read_state(
    path: Path,
    doc: dict[str, Any],
    files: dict[str, dict[str, Any]],
    classifier: nn.Module,
    latent_dim: int,
    data: ImageDataset | None,
) -> tuple[dict[str, Any], ImageDataset]:
    """Read and check every part; the state (``state_dict()`` keys) and its dataset."""
    data = dataset_of(path, doc["dataset"], data)
    if latent_dim != doc["latent_dim"]:
        raise fail(
            path,
            f"session.json: field 'latent_dim': latent size {doc['latent_dim']} differs from the "
            f"generator's {latent_dim}",
        )
    snapshots = read_snapshots(path, files["weights"], doc["snapshots"], classifier)
    errors = regions = None
    if doc["errors"] is not None:
        errors = read_errors(path, files["errors"], doc["errors"], latent_dim)
    if doc["regions"] is not None:
        if errors is None:
            raise fail(path, "session.json: field 'regions' is set but field 'errors' is null")
        regions = read_regions(path, files["regions"], doc["regions"], len(errors), latent_dim)
    state = {
        "seed": doc["seed"],
        "errors": errors,
        "regions": regions,
        "labels": checked_labels(path, doc, data, regions),
        "relabels": checked_relabels(path, doc, data),
        "snapshots": snapshots,
        "active_round": checked_rounds(path, doc, len(snapshots)),
        "history": checked_history(path, doc),
    }
    return state, data


def checked_history(path: Path, doc: dict[str, Any]) -> list[RoundRecord]:
    """The round records (their fields' kinds were checked by the schema; their values here)."""
    records = []
    for i, record in enumerate(doc["history"]):
        try:
            records.append(RoundRecord.from_dict(record))
        except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
            raise fail(path, f"session.json: field 'history[{i}]' is invalid ({exc!r})") from exc
    return records


def dataset_of(path: Path, fingerprint: dict[str, Any], data: ImageDataset | None) -> ImageDataset:
    """The dataset to load with (the bundled one by name), checked against the fingerprint."""
    if data is None:
        if fingerprint["name"] != "digits":
            raise ValueError(f"data: the session used dataset {fingerprint['name']!r}; pass data=")
        data = load_dataset("digits")
    if not isinstance(data, ImageDataset):
        raise TypeError(f"data: expected an ImageDataset or None, got {type(data).__name__}")
    if not fingerprint_matches(data, fingerprint):
        raise fail(
            path,
            f"it was made on a different dataset ({fingerprint['name']}, "
            f"{fingerprint['n_train']}/{fingerprint['n_test']} images)",
        )
    return data


def checked_labels(path: Path, doc: dict[str, Any], data: ImageDataset, regions: Any) -> Any:
    try:
        return check_labels(doc["labels"], data.num_classes, regions.ids if regions else [])
    except (ValueError, KeyError) as exc:
        raise fail(
            path, f"session.json is incomplete or inconsistent (field 'labels': {exc})"
        ) from exc


def checked_relabels(path: Path, doc: dict[str, Any], data: ImageDataset) -> Any:
    # "relabels" joined format version 1 later; a file without it has none
    records = doc.get("relabels") or []
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise fail(path, "field 'relabels': expected a list of records")
    try:
        return validate_records(records, data.y_train, data.num_classes)
    except (ValueError, KeyError, TypeError) as exc:
        raise fail(path, f"field 'relabels' is invalid ({exc})") from exc


def checked_rounds(path: Path, doc: dict[str, Any], snapshots: int) -> int:
    """The active round, checked against the snapshots and the history."""
    active = doc["active_round"]
    if not 0 <= active < snapshots:
        raise fail(
            path,
            f"field 'active_round': its active round {active} out of range for {snapshots} "
            "snapshots",
        )
    if len(doc["history"]) != snapshots - 1:
        raise fail(
            path,
            f"session.json is incomplete or inconsistent: {len(doc['history'])} history records "
            f"(field 'history') for {snapshots - 1} rounds (field 'snapshots')",
        )
    return active


def read_tensors(path: Path, entry: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of the data file a manifest ``entry`` names, checked before parsing."""
    name = entry["name"]
    try:
        data = (path / name).read_bytes()
    except OSError as exc:
        raise fail(path, f"{name} is missing or unreadable ({exc.strerror or exc})") from exc
    why = not_safetensors(data)
    if why is None and "sha256" in entry:
        damage = check_entry(entry, data)
        if damage is not None:
            raise fail(path, f"{name} is damaged ({damage})")
    tensors, why = parse_safetensors(data)
    if tensors is None:
        raise fail(path, f"{name} {why}")
    return tensors


def read_snapshots(
    path: Path, entry: dict[str, Any], count: int, classifier: torch.nn.Module
) -> list[dict[str, torch.Tensor]]:
    """One classifier state dict per round, each checked against ``classifier``'s shapes."""
    if count < 1:
        raise fail(path, f"field 'snapshots': it declares {count} weight snapshots; at least 1")
    flat = read_tensors(path, entry)
    expected = {k: (v.shape, v.dtype) for k, v in classifier.state_dict().items()}
    if count * len(expected) != len(flat):
        raise fail(
            path,
            f"{entry['name']} holds {len(flat)} tensors, not {count} snapshots (field "
            f"'snapshots') of the classifier's {len(expected)}",
        )
    snaps: list[dict[str, torch.Tensor]] = [{} for _ in range(count)]
    for key, value in flat.items():
        index, _, name = key.partition(".")
        if not name or not (index.isascii() and index.isdigit()) or int(index) >= count:
            raise fail(path, f"{entry['name']}: unexpected weight entry {key!r}")
        snaps[int(index)][name] = value
    for i, snap in enumerate(snaps):
        if {k: (v.shape, v.dtype) for k, v in snap.items()} != expected:
            raise fail(
                path,
                f"{entry['name']}: snapshot {i} does not match the classifier's parameters "
                "(names, shapes or dtypes; another model?)",
            )
    return snaps


def read_errors(
    path: Path, entry: dict[str, Any], meta: dict[str, Any], latent_dim: int
) -> ErrorSet:
    """The error set, its tensors checked for fields and shapes."""
    name = entry["name"]
    tensors = read_tensors(path, entry)
    if set(tensors) != set(ERROR_FIELDS):
        raise fail(path, f"{name} holds {sorted(tensors)}, expected {sorted(ERROR_FIELDS)}")
    m = len(tensors["codes"]) if tensors["codes"].dim() else -1
    shapes = {k: tuple(t.shape) for k, t in tensors.items()}
    if shapes["codes"] != (m, latent_dim) or any(not s or s[0] != m for s in shapes.values()):
        raise fail(path, f"{name} has inconsistent shapes ({shapes}; latent size {latent_dim})")
    return ErrorSet(
        **tensors,
        settings=meta["settings"],
        images_searched=meta["images_searched"],
        decodes=meta["decodes"],
        seconds=meta["seconds"],
        split=meta["split"],
    )


def read_mixture(path: Path, name: str, tensors: dict[str, torch.Tensor], d: int) -> Mixture:
    """The mixture, its weights (K,), means (K, d) and covariances (K, d, d) checked first."""
    missing = {"weights", "means", "covariances"} - set(tensors)
    if missing:
        raise fail(path, f"{name} holds no valid mixture (missing {sorted(missing)})")
    k = len(tensors["weights"]) if tensors["weights"].dim() == 1 else -1
    shapes = {n: tuple(tensors[n].shape) for n in ("weights", "means", "covariances")}
    if shapes != {"weights": (k,), "means": (k, d), "covariances": (k, d, d)} or k < 1:
        raise fail(
            path,
            f"{name}: expected mixture weights (K,), means (K, {d}) and covariances "
            f"(K, {d}, {d}) for the latent size {d}, got {shapes}",
        )
    try:
        return Mixture(tensors["weights"], tensors["means"], tensors["covariances"])
    except (RuntimeError, ValueError, TypeError) as exc:  # e.g. a covariance not positive definite
        raise fail(path, f"{name} holds no valid mixture ({exc})") from exc


def read_regions(
    path: Path, entry: dict[str, Any], meta: dict[str, Any], n_errors: int, latent_dim: int
) -> RegionSet:
    """The region set; shapes, components and assignments are all checked before it is made."""
    name = entry["name"]
    tensors = read_tensors(path, entry)
    mixture = read_mixture(path, name, tensors, latent_dim)
    regions = [region_of(path, r, mixture) for r in meta["regions"]]
    ids = [r.id for r in regions]
    if len(set(ids)) != len(ids):
        raise fail(path, f"session.json names a region id twice ({ids})")
    assignments = tensors.get("assignments")
    if assignments is None or assignments.shape != (n_errors,) or assignments.is_floating_point():
        raise fail(path, f"{name}: the assignments do not match the {n_errors} errors")
    unknown = set(assignments.unique().tolist()) - {-1, *ids}
    if unknown:
        raise fail(
            path, f"{name}: assignments name regions {sorted(unknown)[:5]} that do not exist"
        )
    return RegionSet(regions, assignments.long(), mixture, meta["settings"], meta["seed"])


def region_of(path: Path, r: dict[str, Any], mixture: Mixture) -> Region:
    """One region of the manifest, its mixture component checked to exist."""
    comp, k = r["component"], len(mixture.weights)
    if not 0 <= comp < k:
        raise fail(
            path,
            f"session.json is incomplete or inconsistent: region {r['id']} names component "
            f"{comp}, but the mixture has {k}",
        )
    return Region(
        id=r["id"],
        weight=num(r["weight"]),
        size=r["size"],
        mean=mixture.means[comp].float(),
        covariance=mixture.covariances[comp].float(),
        transition=(r["transition"][0], r["transition"][1]),
        transition_share=num(r["transition_share"]),
        mean_confidence=num(r["mean_confidence"]),
        mean_validity=num(r["mean_validity"]),
        component=comp,
        user_defined=r["user_defined"],
    )


def num(value: float | None) -> float:
    return float("nan") if value is None else float(value)
