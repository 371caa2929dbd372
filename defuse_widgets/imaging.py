"""Images (tensors in [0, 1]) -> uint8 arrays, thumbnails, PNG and sprite sheets."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch


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


def png_bytes(image: Any, scale: int = 1) -> bytes:
    """One image (C, H, W) float in [0, 1] or uint8 (H, W, C) -> PNG bytes, upscaled ``scale`` x."""
    from PIL import Image

    arr = image if isinstance(image, np.ndarray) and image.dtype == np.uint8 else to_uint8(image)[0]
    if arr.ndim == 2:
        arr = arr[..., None]
    pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def sprite_sheet(images: Any, columns: int | None = None) -> np.ndarray:
    """Tile images (N, C, H, W) float or uint8 (N, H, W, C) into one uint8 (rows*H, cols*W, C).

    Image ``i`` sits at row ``i // columns``, column ``i % columns``; empty tiles are black.
    """
    from torchvision.utils import make_grid

    arr = (
        images if isinstance(images, np.ndarray) and images.dtype == np.uint8 else to_uint8(images)
    )
    n, h, w, c = arr.shape
    cols = columns or max(1, int(np.ceil(np.sqrt(max(n, 1)))))
    rows = max(1, -(-n // cols))
    # make_grid narrows the grid to N tiles when N < cols, and makes grey images RGB: black tiles
    # fill the last row, and the grey channel is taken back out
    tiles = torch.zeros((rows * cols, c, h, w), dtype=torch.uint8)
    tiles[:n] = torch.from_numpy(arr).permute(0, 3, 1, 2)
    grid = make_grid(tiles, nrow=cols, padding=0)[:c]
    return np.ascontiguousarray(grid.permute(1, 2, 0).numpy())


class ImageGrid:
    """Images shown as one grid in a notebook (a PNG), e.g. ``dw.image_grid(sample.images)``.

    Parameters
    ----------
    images : (N, C, H, W) float in [0, 1] or uint8 (N, H, W, C)
        At most ``limit`` are shown, in order, row by row.
    columns : int
        Images per row.
    scale : int
        Each pixel becomes ``scale`` x ``scale`` pixels (nearest neighbour).
    limit : int
        The most images shown.
    """

    def __init__(self, images: Any, columns: int = 8, scale: int = 4, limit: int = 64):
        for name, value in (("columns", columns), ("scale", scale), ("limit", limit)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        self.images = to_uint8(images)[:limit]
        self.columns = min(columns, max(1, len(self.images)))
        self.scale = scale

    def png(self) -> bytes:
        """The grid as PNG bytes."""
        return png_bytes(sprite_sheet(self.images, self.columns), scale=self.scale)

    def save(self, path: Any) -> Any:
        """Write the grid to ``path`` as a PNG file and return the path."""
        out = Path(path)
        out.write_bytes(self.png())
        return out

    def _repr_png_(self) -> bytes:
        return self.png()

    def __repr__(self) -> str:
        n, h, w, c = self.images.shape
        return f"ImageGrid({n} images of {h}x{w}x{c}, {self.columns} per row)"


def image_grid(images: Any, columns: int = 8, scale: int = 4, limit: int = 64) -> ImageGrid:
    """Images (N, C, H, W) in [0, 1] as an :class:`ImageGrid` that a notebook shows as a picture.

    Examples
    --------
    >>> image_grid(torch.rand(16, 1, 8, 8), columns=8)  # doctest: +SKIP
    """
    return ImageGrid(images, columns, scale, limit)
