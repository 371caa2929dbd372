"""2-D projections of latent codes for the error map (UMAP, with a PCA fallback), cached.

``import umap`` costs about 10 s the first time (numba compiles), so it happens lazily inside
:func:`project`, never at package import.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

METHODS = ("umap", "pca")
Placer = Callable[[np.ndarray], np.ndarray]  # places new codes (n, d) on a fitted map: (n, 2)
_CACHE: OrderedDict[str, tuple[np.ndarray, Placer]] = OrderedDict()
_CACHE_SIZE = 16
_LOCK = threading.Lock()


def _as_numpy(codes: Any) -> np.ndarray:
    if hasattr(codes, "detach"):
        codes = codes.detach().cpu().numpy()
    arr = np.asarray(codes, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"codes: expected a 2-D array (M, d), got shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr)


def cache_key(codes: Any, method: str = "umap", **params: Any) -> str:
    """A content hash of ``codes`` (M, d) and the projection settings."""
    arr = _as_numpy(codes)
    h = hashlib.sha1(arr.tobytes())
    h.update(repr((arr.shape, method, sorted(params.items()))).encode())
    return h.hexdigest()


def cached(
    codes: Any,
    method: str = "umap",
    seed: int | None = None,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
) -> np.ndarray | None:
    """The cached result of :func:`project` for ``codes`` with these settings, or None."""
    params = {"seed": seed, "n_neighbors": n_neighbors, "min_dist": min_dist}
    with _LOCK:
        hit = _CACHE.get(cache_key(codes, method, **params))
    return None if hit is None else hit[0].copy()


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()


def _pca_fit(codes: np.ndarray) -> Placer:
    """The projection onto the first two principal components of ``codes`` (M, d)."""
    if codes.shape[0] < 2 or codes.shape[1] < 1:
        return lambda new: np.zeros((len(new), 2), np.float32)
    mean = codes.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd((codes - mean)[:20000], full_matrices=False)
    basis = np.zeros((codes.shape[1], 2), np.float32)
    basis[:, : min(2, len(vt))] = vt[:2].T
    return lambda new: ((new - mean) @ basis).astype(np.float32)


def pca_2d(codes: np.ndarray) -> np.ndarray:
    """First two principal components of ``codes`` (M, d) as float32 (M, 2)."""
    return _pca_fit(codes)(codes)


def project(
    codes: Any,
    method: str = "umap",
    seed: int | None = None,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    progress: Callable[[str], None] | None = None,
    use_cache: bool = True,
) -> np.ndarray:
    """Project latent codes to 2-D for the error map.

    Parameters
    ----------
    codes : array or tensor of shape (M, d)
        Latent codes of the errors.
    method : "umap" or "pca"
        UMAP (umap-learn) or the first two principal components. UMAP needs at least 4 points;
        with fewer it falls back to PCA.
    seed : int or None
        UMAP ``random_state``. Seeded UMAP runs single-threaded (about 6x slower), so the default
        is unseeded.
    progress : callable(str) or None
        Called with a short phase message ("importing umap", "fitting umap on 2,000 points").
    use_cache : bool
        Reuse (and store) the result for identical codes and settings (an in-memory LRU of 16).

    Returns
    -------
    np.ndarray, float32, shape (M, 2)
    """
    return fit(codes, method, seed, n_neighbors, min_dist, progress, use_cache)[0]


def fit(
    codes: Any,
    method: str = "umap",
    seed: int | None = None,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    progress: Callable[[str], None] | None = None,
    use_cache: bool = True,
) -> tuple[np.ndarray, Placer]:
    """:func:`project`, and a function that places new codes (n, d) on the same map: UMAP's
    ``transform`` (new points land by their nearest mapped neighbours; the map does not move) or
    the same two principal components. The explorer places training images with it."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    arr = _as_numpy(codes)
    params = {"seed": seed, "n_neighbors": n_neighbors, "min_dist": min_dist}
    key = cache_key(arr, method, **params)
    if use_cache:
        with _LOCK:
            hit = _CACHE.get(key)
            if hit is not None:
                _CACHE.move_to_end(key)
                return hit[0].copy(), hit[1]
    report = progress or (lambda msg: None)
    m = len(arr)
    if method == "pca" or m < 4:
        report(f"projecting {m:,} points (PCA)")
        placer = _pca_fit(arr)
        out = placer(arr)
    else:
        report("importing umap")
        import umap  # lazy: ~10 s the first time

        report(f"fitting UMAP on {m:,} points")
        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=max(2, min(n_neighbors, m - 1)),
            min_dist=min_dist,
            random_state=seed,
            init="spectral" if m > n_neighbors + 2 else "random",
        )
        out = np.asarray(reducer.fit_transform(arr), dtype=np.float32)
        placer = reducer.transform
    placer = _checked(placer, arr.shape[1])
    if use_cache:
        with _LOCK:
            _CACHE[key] = (out.copy(), placer)
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    report("projection ready")
    return out.copy(), placer


def _checked(placer: Placer, dim: int) -> Placer:
    def place(new_codes: Any) -> np.ndarray:
        new = _as_numpy(new_codes)
        if new.shape[1] != dim:
            raise ValueError(
                f"codes: expected codes of dimension {dim}, got shape {tuple(new.shape)}"
            )
        if not len(new):
            return np.zeros((0, 2), np.float32)
        return np.asarray(placer(new), dtype=np.float32)

    return place
