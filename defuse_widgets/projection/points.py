"""What the error map draws besides its points' positions: thumbnails of the points' decoded codes,
which errors the current model fixes, and a split's images placed on the map as a background."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from defuse_widgets.imaging import downsample, to_uint8
from defuse_widgets.models.inference import batched
from defuse_widgets.regions.distill import RegionSet
from defuse_widgets.search.errors import ErrorSet

CHUNK = 4096  # codes decoded per batch for the map-wide passes (thumbnails, fixed points)
Coder = Callable[[torch.Tensor], torch.Tensor]  # a generator's decode (codes -> images) or encode


def thumbnail_side(image_shape: tuple[int, ...], side: int) -> tuple[int, int, int]:
    """(h, w, c) of a thumbnail of images ``image_shape`` (C, H, W) shrunk to at most ``side``."""
    c, h, w = image_shape
    f = max(1, -(-max(h, w) // side))
    return h // f, w // f, min(c, 3)


def thumbnails(
    decode: Coder,
    codes: torch.Tensor,
    image_shape: tuple[int, ...],
    side: int,
    max_bytes: int | None = None,
) -> np.ndarray | None:
    """uint8 (n, h, w, c) thumbnails of ``codes`` (n, d), at most ``side`` pixels a side.

    Parameters
    ----------
    decode : callable
        Codes (b, d) -> images (b, C, H, W) in [0, 1] (the session's ``decode``).
    codes : Tensor
        The map's latent codes.
    image_shape : tuple
        (C, H, W) of the decoded images.
    side : int
        The longest side of a thumbnail, in pixels.
    max_bytes : int, optional
        Returns None when the thumbnails would take more (a view then asks for the hovered
        point's thumbnail only).
    """
    shape = thumbnail_side(tuple(image_shape), side)
    if max_bytes is not None and int(np.prod(shape)) * len(codes) > max_bytes:
        return None
    out = batched(
        lambda z: torch.from_numpy(downsample(to_uint8(decode(z)), side)),
        codes,
        device="cpu",
        batch_size=CHUNK,
        empty_shape=(0, *shape),
        empty_dtype=torch.uint8,
    )
    return out.numpy()


def fixed_points(
    errors: ErrorSet,
    regions: RegionSet | None,
    labels: Mapping[int, int],
    classify: Callable[[torch.Tensor], torch.Tensor],
) -> np.ndarray:
    """uint8 (M,): 1 where the model no longer makes error ``i``.

    Parameters
    ----------
    errors : ErrorSet
        The map's errors.
    regions : RegionSet or None
        The regions fitted on them, if any.
    labels : mapping
        Region id -> its label; class labels (>= 0) set the target of the region's errors.
    classify : callable
        Codes (b, d) -> logits (b, K) of the current model on their decodes.

    The target of an error is its region's class label when the region has one, else the
    error's true label; the error is fixed when the model now predicts that target.
    """
    target = errors.true_label.clone()
    if regions is not None:
        for rid, label in labels.items():
            if label >= 0:
                target[regions.assignments == rid] = label
    pred = batched(
        lambda z: classify(z).argmax(1),
        errors.codes,
        device="cpu",
        batch_size=CHUNK,
        empty_dtype=torch.long,
    )
    return (pred == target).numpy().astype(np.uint8)


def background_size(images: int, split: str, limit: int) -> tuple[int, str]:
    """How many of a split's ``images`` make the map's background (at most ``limit``), and how
    the map names them (``"training images"``, ``"of 1,347 training images"``...)."""
    n = min(images, limit)
    name = "training images" if split == "train" else f"{split} images"
    return n, name if n == images else f"of {images:,} {name}"


def background_points(
    images: torch.Tensor, encode: Coder, n: int, place: Callable[[Any], np.ndarray]
) -> np.ndarray:
    """float32 (n, 2): a seeded random subset of ``n`` of ``images``, encoded and placed on the
    errors' map by ``place`` (the fitted projection's placer)."""
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return np.ascontiguousarray(place(encode(images[idx])), dtype=np.float32)
