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
_CACHE: OrderedDict[str, np.ndarray] = OrderedDict()
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
        out = _CACHE.get(cache_key(codes, method, **params))
    return None if out is None else out.copy()


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()


def pca_2d(codes: np.ndarray) -> np.ndarray:
    """First two principal components of ``codes`` (M, d) as float32 (M, 2)."""
    if codes.shape[0] < 2 or codes.shape[1] < 1:
        return np.zeros((codes.shape[0], 2), np.float32)
    x = codes - codes.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(x[: min(len(x), 20000)], full_matrices=False)
    out = x @ vt[:2].T
    if out.shape[1] < 2:
        out = np.concatenate([out, np.zeros((len(out), 2 - out.shape[1]), out.dtype)], axis=1)
    return out.astype(np.float32)


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
                return hit.copy()
    report = progress or (lambda msg: None)
    m = len(arr)
    if method == "pca" or m < 4:
        report(f"projecting {m:,} points (PCA)")
        out = pca_2d(arr)
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
    if use_cache:
        with _LOCK:
            _CACHE[key] = out.copy()
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    report("projection ready")
    return out
