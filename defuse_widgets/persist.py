"""Save and load a DefuseSession as a directory of safetensors and JSON (never pickle)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from .data import ImageDataset, load_dataset
from .distill import Region, RegionSet
from .errors import ERROR_FIELDS, ErrorSet
from .evaluation import RoundRecord
from .generative import as_generator
from .jsonio import nan_to_none
from .mixture import Mixture
from .relabels import validate_records

if TYPE_CHECKING:
    from .session import DefuseSession

FORMAT = "defuse-widgets-session"
VERSION = 1
FILES = ("session.json", "weights.safetensors")


def dataset_fingerprint(data: ImageDataset) -> dict[str, Any]:
    return {
        "name": data.name,
        "image_shape": list(data.image_shape),
        "classes": list(data.classes),
        "n_train": len(data.y_train),
        "n_test": len(data.y_test),
        "label_sum": int((data.y_test * torch.arange(1, len(data.y_test) + 1)).sum() % 1_000_003),
    }


def save_session(session: DefuseSession, path: Path) -> Path:
    """Write ``session.state_dict()`` to the directory ``path`` (created; old files replaced)."""
    state = session.state_dict()
    path.mkdir(parents=True, exist_ok=True)
    weights = {
        f"{i}.{k}": v.contiguous()
        for i, snap in enumerate(state["snapshots"])
        for k, v in snap.items()
    }
    save_file(weights, str(path / "weights.safetensors"))
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
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
    }
    errors, regions = state["errors"], state["regions"]
    if errors is not None:
        _write_tensors(path / "errors.safetensors", errors.tensors())
        doc["errors"] = {
            "settings": errors.settings,
            "images_searched": errors.images_searched,
            "decodes": errors.decodes,
            "seconds": errors.seconds,
            "split": errors.split,
        }
    if regions is not None:
        _write_tensors(
            path / "regions.safetensors",
            {"assignments": regions.assignments, **regions.mixture.tensors()},
        )
        doc["regions"] = {
            "settings": regions.settings,
            "seed": regions.seed,
            "regions": [nan_to_none(r.summary()) for r in regions.regions],
        }
    (path / "session.json").write_text(json.dumps(doc, indent=1))
    return path


def _write_tensors(file: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(file))


def _fail(path: Path, why: str) -> ValueError:
    return ValueError(f"{path} is not a loadable defuse-widgets session: {why}")


def _read_tensors(path: Path, name: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path / name))
    except Exception as exc:
        raise _fail(path, f"{name} is missing or damaged ({exc})") from exc


def load_session(
    cls: type[DefuseSession],
    path: Path,
    classifier: torch.nn.Module,
    generator: Any,
    data: ImageDataset | None,
    device: Any,
) -> DefuseSession:
    """Validate and load a directory written by :func:`save_session`."""
    if not path.is_dir():
        raise _fail(path, "no such directory")
    try:
        doc = json.loads((path / "session.json").read_text())
    except FileNotFoundError as exc:
        raise _fail(path, "session.json is missing") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _fail(path, f"session.json is not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _fail(path, f"session.json does not declare format {FORMAT!r}")
    if doc.get("version") != VERSION:
        raise _fail(
            path, f"format version {doc.get('version')!r}; this release reads version {VERSION}"
        )
    try:
        return _build(cls, path, doc, classifier, generator, data, device)
    except (KeyError, TypeError, IndexError) as exc:
        raise _fail(path, f"session.json is incomplete or inconsistent ({exc!r})") from exc


def _build(
    cls: type[DefuseSession],
    path: Path,
    doc: dict[str, Any],
    classifier: torch.nn.Module,
    generator: Any,
    data: ImageDataset | None,
    device: Any,
) -> DefuseSession:
    fingerprint = doc["dataset"]
    if data is None:
        if fingerprint["name"] != "digits":
            raise ValueError(f"data: the session used dataset {fingerprint['name']!r}; pass data=")
        data = load_dataset("digits")
    if dataset_fingerprint(data) != fingerprint:
        raise _fail(
            path,
            f"it was made on a different dataset ({fingerprint['name']}, "
            f"{fingerprint['n_train']}/{fingerprint['n_test']} images)",
        )
    snapshots = _read_snapshots(path, doc["snapshots"], classifier)
    latent_dim = as_generator(generator).latent_dim
    if latent_dim != doc["latent_dim"]:
        raise _fail(
            path, f"latent size {doc['latent_dim']} differs from the generator's {latent_dim}"
        )
    errors = _read_errors(path, doc["errors"], latent_dim) if doc["errors"] is not None else None
    regions = None
    if doc["regions"] is not None:
        if errors is None:
            raise _fail(path, "it has regions but no errors")
        regions = _read_regions(path, doc["regions"], len(errors))
    # "relabels" joined format version 1 later; a file without it has none
    records = doc.get("relabels") or []
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise _fail(path, "its relabels are not a list of records")
    session = cls(classifier, generator, data, device=device, seed=int(doc["seed"]), progress=False)
    try:
        relabels = validate_records(records, data.y_train, data.num_classes)
    except ValueError as exc:
        raise _fail(path, f"its relabels are invalid ({exc})") from exc
    try:
        state = {
            "seed": int(doc["seed"]),
            "errors": errors,
            "regions": regions,
            "labels": doc["labels"],
            "relabels": relabels,
            "snapshots": snapshots,
            "active_round": int(doc["active_round"]),
            "history": [RoundRecord.from_dict(r) for r in doc["history"]],
        }
        session.load_state_dict(state)
    except (ValueError, KeyError) as exc:
        raise _fail(path, f"session.json is incomplete or inconsistent ({exc})") from exc
    return session


def _read_snapshots(
    path: Path, count: int, classifier: torch.nn.Module
) -> list[dict[str, torch.Tensor]]:
    flat = _read_tensors(path, "weights.safetensors")
    expected = {k: v.shape for k, v in classifier.state_dict().items()}
    snaps: list[dict[str, torch.Tensor]] = [{} for _ in range(count)]
    for key, value in flat.items():
        index, _, name = key.partition(".")
        if not name or not index.isdigit() or int(index) >= count:
            raise _fail(path, f"unexpected weight entry {key!r}")
        snaps[int(index)][name] = value
    for i, snap in enumerate(snaps):
        shapes = {k: v.shape for k, v in snap.items()}
        if shapes != expected:
            raise _fail(
                path, f"snapshot {i} does not match the classifier's parameters (another model?)"
            )
    return snaps


def _read_errors(path: Path, meta: dict[str, Any], latent_dim: int) -> ErrorSet:
    tensors = _read_tensors(path, "errors.safetensors")
    if set(tensors) != set(ERROR_FIELDS):
        raise _fail(
            path, f"errors.safetensors holds {sorted(tensors)}, expected {sorted(ERROR_FIELDS)}"
        )
    m = len(tensors["codes"])
    if tensors["codes"].shape != (m, latent_dim) or any(len(t) != m for t in tensors.values()):
        raise _fail(path, "errors.safetensors has inconsistent shapes")
    return ErrorSet(
        **tensors,
        settings=meta["settings"],
        images_searched=meta["images_searched"],
        decodes=meta["decodes"],
        seconds=meta["seconds"],
        split=meta["split"],
    )


def _read_regions(path: Path, meta: dict[str, Any], n_errors: int) -> RegionSet:
    tensors = _read_tensors(path, "regions.safetensors")
    try:
        mixture = Mixture(tensors["weights"], tensors["means"], tensors["covariances"])
    except (KeyError, RuntimeError) as exc:
        raise _fail(path, f"regions.safetensors holds no valid mixture ({exc})") from exc
    assignments = tensors.get("assignments")
    if assignments is None or assignments.shape != (n_errors,):
        raise _fail(path, "regions.safetensors assignments do not match the errors")
    regions = []
    for r in meta["regions"]:
        comp = int(r["component"])
        regions.append(
            Region(
                id=int(r["id"]),
                weight=float(r["weight"]),
                size=int(r["size"]),
                mean=mixture.means[comp].float(),
                covariance=mixture.covariances[comp].float(),
                transition=(int(r["transition"][0]), int(r["transition"][1])),
                transition_share=float(r["transition_share"]),
                mean_confidence=_num(r["mean_confidence"]),
                mean_validity=_num(r["mean_validity"]),
                component=comp,
                user_defined=bool(r["user_defined"]),
            )
        )
    return RegionSet(regions, assignments, mixture, meta["settings"], int(meta["seed"]))


def _num(value: float | None) -> float:
    return float("nan") if value is None else float(value)
