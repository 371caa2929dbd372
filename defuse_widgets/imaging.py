"""Images (tensors in [0, 1]) -> uint8 arrays for the browser, and thumbnails of them."""

from __future__ import annotations

from typing import Any

import numpy as np


def to_uint8(images: Any) -> np.ndarray:
    """Images (N, C, H, W) or (C, H, W) float in [0, 1] -> uint8 (N, H, W, C), C in {1, 3}.

    Values are clipped to [0, 1]; 4-channel (or other) images keep their first three channels.
    """
    if hasattr(images, "detach"):
        images = images.detach().float().cpu().numpy()
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise ValueError(f"images: expected shape (N, C, H, W), got {tuple(arr.shape)}")
    if arr.shape[1] not in (1, 3):
        arr = arr[:, :3] if arr.shape[1] > 3 else arr[:, :1]
    out = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out.transpose(0, 2, 3, 1))


def downsample(images: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink uint8 (N, H, W, C) by an integer factor (box filter) so H, W <= ``max_side``."""
    n, h, w, c = images.shape
    f = max(1, -(-max(h, w) // max_side))
    if f == 1:
        return images
    hh, ww = h // f, w // f
    x = images[:, : hh * f, : ww * f].reshape(n, hh, f, ww, f, c).astype(np.float32)
    return np.ascontiguousarray(x.mean(axis=(2, 4)).round().astype(np.uint8))
