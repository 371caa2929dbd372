"""Save and load a DefuseSession as a directory of safetensors and JSON (never pickle).

A save is kill-safe (see :mod:`~defuse_widgets.utils.atomic`): the data files of one save carry a
generation token in their names (``weights.<token>.safetensors``) and ``session.json``, the
manifest naming each of them with its size and sha256, is switched in last with an atomic
rename. Format version 1 (fixed names, no manifest entries) is still read.
"""

from __future__ import annotations

import errno
import json
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save

from defuse_widgets.correction.evaluation import RoundRecord
from defuse_widgets.data import ImageDataset, load_dataset
from defuse_widgets.models.generative import as_generator
from defuse_widgets.persist.read import fail, read_errors, read_regions, read_snapshots
from defuse_widgets.persist.schema import FieldError, check_document
from defuse_widgets.regions.labels import check_labels
from defuse_widgets.regions.relabels import validate_records
from defuse_widgets.utils.atomic import leftovers, new_generation, remove, switch, write_durable
from defuse_widgets.utils.jsonio import nan_to_none

if TYPE_CHECKING:
    from defuse_widgets.session.session import DefuseSession

SAVED = "saved"  # load with the validation fraction the save recorded
FORMAT = "defuse-widgets-session"
VERSION = 2
READS = (1, 2)
MANIFEST = "session.json"


def dataset_fingerprint(data: ImageDataset) -> dict[str, Any]:
    return {
        "name": data.name,
        "image_shape": list(data.image_shape),
        "classes": list(data.classes),
        "n_train": len(data.y_train),
        "n_test": len(data.y_test),
        "label_sum": int((data.y_test * torch.arange(1, len(data.y_test) + 1)).sum() % 1_000_003),
    }


# ----- save -----


def save_session(session: DefuseSession, path: Path) -> Path:
    """Write ``session.state_dict()`` to the directory ``path`` (created if new).

    An earlier save there stays loadable until the new one is complete; the earlier save's files
    are removed once the new manifest is in place. The session's lock is held throughout, so a
    save never sees a half-made change from another thread.
    """
    prepare_directory(path)
    with session._lock:
        doc, blobs = encode(session)
        write_generation(path, doc, blobs)
    return path


def prepare_directory(path: Path) -> None:
    """Create ``path`` or check it is a writable directory; raise a clear error otherwise."""
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"path: expected a directory (new, or an earlier save), got the existing file {path}; "
            "choose another path"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise ValueError(
            f"path: expected a directory path, got {path}, whose parent is a file; "
            "choose another path"
        ) from exc
    except OSError as exc:
        raise unwritable(path, exc) from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise unwritable(path, refusal(path))


def refusal(path: Path) -> OSError:
    """The OS error a write into ``path`` would meet: a read-only mount or a permission."""
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return OSError(errno.EROFS, "Read-only file system")
    except (OSError, AttributeError):  # no statvfs on Windows
        pass
    return PermissionError(errno.EACCES, "Permission denied")


def unwritable(path: Path, exc: OSError) -> OSError:
    """The error for a directory the save cannot write to (the earlier save is untouched)."""
    why = exc.strerror or str(exc)
    cls = PermissionError if isinstance(exc, PermissionError) else OSError
    return cls(
        f"path: expected a writable directory, got {path} ({why}); choose another path, make it "
        "writable or free some space (an earlier save there is unchanged)"
    )


def encode(session: DefuseSession) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest (without its ``files`` entry) and the serialized data files of a session."""
    state = session.state_dict()
    weights = {
        f"{i}.{k}": v.contiguous()
        for i, snap in enumerate(state["snapshots"])
        for k, v in snap.items()
    }
    blobs = {"weights": save(weights)}
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": state["seed"],
        "dataset": dataset_fingerprint(session.data),
        "latent_dim": session.generator.latent_dim,
        "snapshots": len(state["snapshots"]),
        "active_round": state["active_round"],
        "labels": {str(k): v for k, v in state["labels"].items()},
        "history": nan_to_none(state["history"]),
        "errors": None,
        "regions": None,
        "relabels": [r.to_dict() for _, r in sorted(state["relabels"].items())],
        "validation": None if session.validation is None else session.validation.fraction,
    }
    errors, regions = state["errors"], state["regions"]
    if errors is not None:
        blobs["errors"] = tensor_bytes(errors.tensors())
        doc["errors"] = {
            "settings": errors.settings,
            "images_searched": errors.images_searched,
            "decodes": errors.decodes,
            "seconds": errors.seconds,
            "split": errors.split,
        }
    if regions is not None:
        blobs["regions"] = tensor_bytes(
            {"assignments": regions.assignments, **regions.mixture.tensors()}
        )
        doc["regions"] = {
            "settings": regions.settings,
            "seed": regions.seed,
            "regions": [nan_to_none(r.summary()) for r in regions.regions],
        }
    return doc, blobs


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    return save({k: v.contiguous() for k, v in tensors.items()})


def write_generation(path: Path, doc: dict[str, Any], blobs: dict[str, bytes]) -> None:
    """Write the data files under a new generation, switch the manifest, drop older files."""
    generation = new_generation()
    names = [f"{key}.{generation}.safetensors" for key in blobs]
    try:
        doc["files"] = {
            key: write_durable(path / name, data) for (key, data), name in zip(blobs.items(), names)
        }
        switch(path, MANIFEST, json.dumps(doc, indent=1), generation)
    except BaseException as exc:  # an OS refusal, or Ctrl-C: drop this save's own files
        if not switched(path, generation):
            remove(path, [*names, f".{MANIFEST}.{generation}.tmp"])
        if isinstance(exc, OSError):
            raise unwritable(path, exc) from exc
        raise
    remove(path, leftovers(path, keep=set(names)))


def switched(path: Path, generation: str) -> bool:
    """Whether the manifest in ``path`` already names the files of ``generation``."""
    try:
        return f".{generation}." in (path / MANIFEST).read_text()
    except (OSError, UnicodeDecodeError):
        return False


# ----- load -----


def load_session(
    cls: type[DefuseSession],
    path: Path,
    classifier: torch.nn.Module,
    generator: Any,
    data: ImageDataset | None,
    device: Any,
    validation: Any = SAVED,
) -> DefuseSession:
    """Validate and load a directory written by :func:`save_session` (any version it wrote).

    Everything is read and checked before the session is made, so a refused directory leaves
    ``classifier`` as it was. Files of an interrupted later save are ignored, with a warning.
    """
    doc = read_manifest(path)
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
        session = build(cls, path, doc, files, classifier, generator, data, device, validation)
    except (KeyError, TypeError, IndexError) as exc:
        raise fail(path, f"session.json is incomplete or inconsistent ({exc!r})") from exc
    stale = leftovers(path, keep={e["name"] for e in files.values()})
    if stale:
        warnings.warn(
            f"{path}: loaded the complete save of {doc.get('saved_at', 'an earlier version')}; "
            f"ignored {len(stale)} file(s) left by an interrupted save ({', '.join(stale)}), "
            "which the next save to this directory removes",
            stacklevel=3,
        )
    return session


def read_manifest(path: Path) -> dict[str, Any]:
    """``session.json`` of ``path``, checked for the format and a version this release reads."""
    if not path.is_dir():
        raise fail(path, "no such directory")
    try:
        doc = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError as exc:
        raise fail(path, "session.json is missing") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise fail(path, f"session.json is not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise fail(path, f"session.json does not declare format {FORMAT!r}")
    version = doc.get("version")
    if isinstance(version, bool) or version not in READS:
        raise fail(
            path,
            f"format version {version!r}; this release reads versions {', '.join(map(str, READS))}",
        )
    return doc


def file_entries(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Data file key -> manifest entry; version 1 entries have fixed names and no checksum."""
    if doc["version"] >= 2:
        return dict(doc["files"])
    keys = ["weights"] + [k for k in ("errors", "regions") if doc[k] is not None]
    return {key: {"name": f"{key}.safetensors"} for key in keys}


def build(
    cls: type[DefuseSession],
    path: Path,
    doc: dict[str, Any],
    files: dict[str, dict[str, Any]],
    classifier: torch.nn.Module,
    generator: Any,
    data: ImageDataset | None,
    device: Any,
    validation: Any = SAVED,
) -> DefuseSession:
    """Read and check every part, then make the session and load the state into it."""
    data = dataset_of(path, doc["dataset"], data)
    snapshots = read_snapshots(path, files["weights"], doc["snapshots"], classifier)
    latent_dim = as_generator(generator).latent_dim
    if latent_dim != doc["latent_dim"]:
        raise fail(
            path, f"latent size {doc['latent_dim']} differs from the generator's {latent_dim}"
        )
    errors = regions = None
    if doc["errors"] is not None:
        errors = read_errors(path, files["errors"], doc["errors"], latent_dim)
    if doc["regions"] is not None:
        if errors is None:
            raise fail(path, "it has regions but no errors")
        regions = read_regions(path, files["regions"], doc["regions"], len(errors), latent_dim)
    state = {
        "seed": doc["seed"],
        "errors": errors,
        "regions": regions,
        "labels": checked_labels(path, doc, data, regions),
        "relabels": checked_relabels(path, doc, data),
        "snapshots": snapshots,
        "active_round": checked_rounds(path, doc, len(snapshots)),
        "history": [RoundRecord.from_dict(r) for r in doc["history"]],
    }
    validation = doc.get("validation") if validation is SAVED else validation
    session = cls(classifier, generator, data, device=device, seed=doc["seed"], progress=False,
                  validation=validation)  # fmt: skip
    try:
        session.load_state_dict(state)
    except (ValueError, KeyError) as exc:
        raise fail(path, f"session.json is incomplete or inconsistent ({exc})") from exc
    return session


def dataset_of(path: Path, fingerprint: dict[str, Any], data: ImageDataset | None) -> ImageDataset:
    """The dataset to load with (the bundled one by name), checked against the fingerprint."""
    if data is None:
        if fingerprint["name"] != "digits":
            raise ValueError(f"data: the session used dataset {fingerprint['name']!r}; pass data=")
        data = load_dataset("digits")
    if dataset_fingerprint(data) != fingerprint:
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
        raise fail(path, f"session.json is incomplete or inconsistent ({exc})") from exc


def checked_relabels(path: Path, doc: dict[str, Any], data: ImageDataset) -> Any:
    # "relabels" joined format version 1 later; a file without it has none
    records = doc.get("relabels") or []
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise fail(path, "its relabels are not a list of records")
    try:
        return validate_records(records, data.y_train, data.num_classes)
    except ValueError as exc:
        raise fail(path, f"its relabels are invalid ({exc})") from exc


def checked_rounds(path: Path, doc: dict[str, Any], snapshots: int) -> int:
    """The active round, checked against the snapshots and the history."""
    active = doc["active_round"]
    if not 0 <= active < snapshots:
        raise fail(path, f"its active round {active} out of range for {snapshots} snapshots")
    if len(doc["history"]) != snapshots - 1:
        raise fail(
            path,
            f"session.json is incomplete or inconsistent: {len(doc['history'])} history records "
            f"for {snapshots - 1} rounds",
        )
    return active
