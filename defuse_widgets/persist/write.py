"""Write a session's state (a ``DefuseSession.state_dict()``) as a directory of safetensors and
JSON (never pickle); :mod:`~defuse_widgets.persist.read` reads it back.

A save is kill-safe (see :mod:`~defuse_widgets.utils.atomic`): the data files of one save carry a
generation token in their names (``weights.<token>.safetensors``) and ``session.json``, the
manifest naming each of them with its size and sha256, is switched in last with an atomic
rename. Format version 1 (fixed names, no manifest entries) is still read.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from defuse_widgets.persist.read import MANIFEST, as_directory
from defuse_widgets.persist.schema import FORMAT, VERSION
from defuse_widgets.utils.atomic import leftovers, new_generation, remove, switch, write_durable
from defuse_widgets.utils.jsonio import nan_to_none


def save_state(
    path: str | os.PathLike,
    state: Mapping[str, Any],
    *,
    dataset: Mapping[str, Any],
    latent_dim: int,
    validation: float | None,
) -> Path:
    """Write a session's state to the directory ``path`` (created if new).

    Parameters
    ----------
    path : the directory (new, or an earlier save, which stays loadable until the new one is
        complete; its files are removed once the new manifest is in place).
    state : a ``DefuseSession.state_dict()``: ``seed``, ``errors``, ``regions``, ``labels``,
        ``relabels``, ``snapshots`` (one classifier state dict per round), ``active_round`` and
        ``history``. The caller keeps it from changing until this returns (the session holds
        its lock).
    dataset : the dataset's fingerprint
        (:func:`~defuse_widgets.data.fingerprint.dataset_fingerprint`).
    latent_dim : the generator's latent size d.
    validation : the validation fraction the session carved (None: none, or the user's pair).

    Returns
    -------
    Path
        The directory.
    """
    path = as_directory(path)
    prepare_directory(path)
    doc, blobs = encode(state, dataset, latent_dim, validation)
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


def encode(
    state: Mapping[str, Any],
    dataset: Mapping[str, Any],
    latent_dim: int,
    validation: float | None,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest (without its ``files`` entry) and the serialized data files of a state."""
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
        "dataset": dict(dataset),
        "latent_dim": int(latent_dim),
        "snapshots": len(state["snapshots"]),
        "active_round": state["active_round"],
        "labels": {str(k): v for k, v in state["labels"].items()},
        "history": nan_to_none([record.to_dict() for record in state["history"]]),
        "errors": None,
        "regions": None,
        "relabels": [r.to_dict() for _, r in sorted(state["relabels"].items())],
        "validation": validation,
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
