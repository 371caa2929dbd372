"""Read and check the data files of a saved session (safetensors only, never unpickled)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load

from defuse_widgets.regions.distill import Region, RegionSet
from defuse_widgets.regions.mixture import Mixture
from defuse_widgets.search.errors import ERROR_FIELDS, ErrorSet
from defuse_widgets.utils.atomic import check_entry


def fail(path: Path, why: str) -> ValueError:
    """The error for a directory that is not a loadable session, saying why."""
    return ValueError(f"{path} is not a loadable defuse-widgets session: {why}")


def not_safetensors(data: bytes) -> str | None:
    """Why ``data`` cannot be a safetensors file (None when its header looks right).

    A safetensors file starts with the 8-byte little-endian length of a JSON header that opens
    with ``{``; a pickle starts with ``0x80`` and ``torch.save`` writes a zip archive (``PK``).
    """
    if len(data) >= 9:
        size = int.from_bytes(data[:8], "little")
        if 8 + size <= len(data) and data[8:9] == b"{":
            return None
    if data[:2] == b"PK":
        looks = "it is a zip archive, the format of torch.save"
    elif data[:1] == b"\x80":
        looks = "it is a Python pickle"
    else:
        looks = "it has no safetensors header"
    return f"is not a safetensors file ({looks}); it was not unpickled or executed"


def read_tensors(path: Path, entry: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of the data file a manifest ``entry`` names, checked before parsing."""
    name = entry["name"]
    try:
        data = (path / name).read_bytes()
    except OSError as exc:
        raise fail(path, f"{name} is missing or unreadable ({exc.strerror or exc})") from exc
    why = not_safetensors(data)
    if why is not None:
        raise fail(path, f"{name} {why}")
    if "sha256" in entry:
        damage = check_entry(entry, data)
        if damage is not None:
            raise fail(path, f"{name} is damaged ({damage})")
    try:
        return load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise fail(path, f"{name} is damaged ({exc})") from exc


def read_snapshots(
    path: Path, entry: dict[str, Any], count: int, classifier: torch.nn.Module
) -> list[dict[str, torch.Tensor]]:
    """One classifier state dict per round, each checked against ``classifier``'s shapes."""
    if count < 1:
        raise fail(path, f"it declares {count} weight snapshots; at least 1 is needed")
    flat = read_tensors(path, entry)
    expected = {k: v.shape for k, v in classifier.state_dict().items()}
    snaps: list[dict[str, torch.Tensor]] = [{} for _ in range(count)]
    for key, value in flat.items():
        index, _, name = key.partition(".")
        if not name or not index.isdigit() or int(index) >= count:
            raise fail(path, f"unexpected weight entry {key!r}")
        snaps[int(index)][name] = value
    for i, snap in enumerate(snaps):
        shapes = {k: v.shape for k, v in snap.items()}
        if shapes != expected:
            raise fail(
                path, f"snapshot {i} does not match the classifier's parameters (another model?)"
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
    m = len(tensors["codes"])
    if tensors["codes"].shape != (m, latent_dim) or any(len(t) != m for t in tensors.values()):
        raise fail(path, f"{name} has inconsistent shapes")
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
    except RuntimeError as exc:  # a covariance that is not positive definite
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
