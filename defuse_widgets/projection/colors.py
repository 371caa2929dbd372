"""Region colors for the error map: picked to stay apart for normal vision and the three
dichromacies, with the color science they rest on (CIELAB, simulated color-vision deficiency)."""

from __future__ import annotations

import functools
from collections.abc import Iterable

import numpy as np

UNASSIGNED = "#b8b8b8"
PALETTE_SIZE = 256  # distinct region colors, then they repeat
FIRST_COLOR = "#1f77b4"  # the first region's color (the palette grows from it)

# Machado, Oliveira & Fernandes (2009), severity 1.0: linear-RGB matrices simulating protanopia,
# deuteranopia and tritanopia (the three dichromacies; anomalous trichromats see more than these)
CVD_MATRICES = {
    "protanopia": ((0.152286, 1.052583, -0.204868), (0.114503, 0.786281, 0.099216),
                   (-0.003882, -0.048116, 1.051998)),
    "deuteranopia": ((0.367322, 0.860646, -0.227968), (0.280085, 0.672501, 0.047413),
                     (-0.011820, 0.042940, 0.968881)),
    "tritanopia": ((1.255528, -0.076749, -0.178779), (-0.078411, 0.930809, 0.147602),
                   (0.004733, 0.691367, 0.303900)),
}  # fmt: skip
_SRGB_TO_XYZ = np.array(
    [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]
)
_WHITE = _SRGB_TO_XYZ.sum(1)  # D65


def hex_rgb(colors: Iterable[str]) -> np.ndarray:
    """(n, 3) sRGB in [0, 1] of ``#rrggbb`` strings."""
    return np.array([[int(c[i : i + 2], 16) / 255 for i in (1, 3, 5)] for c in colors], np.float64)


def lab_views(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (4, n, 3) of sRGB colors ``rgb`` (n, 3) in [0, 1] as seen with normal vision, then
    as simulated for protanopia, deuteranopia and tritanopia (:data:`CVD_MATRICES`)."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    views = [lin] + [np.clip(lin @ np.array(m).T, 0, 1) for m in CVD_MATRICES.values()]
    out = []
    for v in views:
        xyz = v @ _SRGB_TO_XYZ.T / _WHITE
        f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
        out.append(
            np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)
        )
    return np.stack(out)


def color_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest CIELAB distance (delta E 1976) between colors ``a`` (n, 3) and ``b`` (n, 3)
    (sRGB in [0, 1]) over normal vision and the three simulated dichromacies: (n,)."""
    return np.linalg.norm(lab_views(a) - lab_views(b), axis=2).min(0)


@functools.lru_cache(maxsize=1)
def _palette() -> tuple[str, ...]:
    """Region colors, picked greedily from a grid of sRGB colors: each the one farthest from
    every color picked before it (and from the grey of unassigned points and the white
    background) in the smallest delta E over normal vision and the three dichromacies, with
    lightness L* in [30, 80] so points stay visible on white. Deterministic; the first colors
    are the farthest apart (measured: the first 30 at least 11 delta E apart for every vision,
    the first 50 at least 8.5; tab20's closest pair is 0.6 apart for a dichromat)."""
    levels = np.arange(0, 256, 17)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3) / 255
    views = lab_views(grid)
    light = views[0, :, 0]
    cand, views = grid[(light >= 30) & (light <= 80)], views[:, (light >= 30) & (light <= 80)]

    def nearest_to(rgb: np.ndarray) -> np.ndarray:
        return np.linalg.norm(views - lab_views(rgb[None])[:, 0][:, None], axis=2).min(0)

    near = np.minimum(nearest_to(hex_rgb([UNASSIGNED])[0]), nearest_to(np.ones(3)))
    first = hex_rgb([FIRST_COLOR])[0]
    picked = [first]
    near = np.minimum(near, nearest_to(first))
    for _ in range(PALETTE_SIZE - 1):
        k = int(near.argmax())
        picked.append(cand[k])
        near = np.minimum(near, nearest_to(cand[k]))
        near[k] = -1.0
    return tuple("#" + "".join(f"{round(255 * c):02x}" for c in rgb) for rgb in picked)


def region_color(region_id: int) -> str:
    """Stable color of a region (grey for -1): colors picked to stay apart for normal vision and
    the common color-vision deficiencies, the first ones farthest apart (256, then repeating)."""
    if region_id < 0:
        return UNASSIGNED
    colors = _palette()
    return colors[region_id % len(colors)]
