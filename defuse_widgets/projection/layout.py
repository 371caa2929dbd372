"""2-D projections of latent codes for the error map (UMAP, with a PCA fallback), cached.

``import umap`` costs about 10 s the first time (numba compiles), so it happens lazily inside
:func:`project`, never at package import. Above ``FIT_POINTS`` codes, UMAP is fitted on a seeded
subsample and the rest are placed with its ``transform``. Results are kept in memory (an LRU) and
on disk (the ``projections`` folder of the package's cache, :func:`cache_dir`, keyed by a hash of
the codes and settings), so a restarted kernel shows the same map at once. The maps on disk are
kept to ``DISK_CACHE_BYTES`` in all: past it, the least recently used go (a read refreshes a
map's modification time).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from defuse_widgets.utils.cache import cache_dir as package_cache_dir

METHODS = ("umap", "pca")
Placer = Callable[[np.ndarray], np.ndarray]  # places new codes (n, d) on a fitted map: (n, 2)
_CACHE: OrderedDict[str, tuple[np.ndarray, Placer]] = OrderedDict()
_CACHE_SIZE = 16
_LOCK = threading.Lock()
FIT_POINTS = 100_000  # above this many codes UMAP is fitted on a subsample of this size
PLACE_BATCH = 50_000  # codes placed by UMAP's transform per progress message
NEIGHBOURS = 15  # a map read back from disk places new codes by their nearest mapped codes
DISK_CACHE_BYTES = 256 * 2**20  # the maps kept on disk (a map of 1,000,000 points is 8 MB)


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
    key = cache_key(codes, method, **params)
    with _LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit[0].copy()
    arr = _as_numpy(codes)
    stored = _read_disk(key, len(arr))
    if stored is not None:  # kept in memory too: the fit() that follows reads no file again
        _remember(key, stored, _checked(_neighbour_fit(arr, stored), arr.shape[1]))
    return None if stored is None else stored.copy()


def clear_cache(disk: bool = True) -> None:
    """Forget every cached projection (in memory, and on disk unless ``disk=False``)."""
    with _LOCK:
        _CACHE.clear()
    if disk and cache_dir().is_dir():
        for file in cache_dir().glob("*.npy"):
            file.unlink(missing_ok=True)


def cache_dir() -> Path:
    """The folder of projections kept across kernel restarts: ``projections`` in the package's
    cache folder (:func:`defuse_widgets.utils.cache.cache_dir`)."""
    return package_cache_dir("projections")


def _read_disk(key: str, m: int) -> np.ndarray | None:
    file = cache_dir() / f"{key}.npy"
    try:
        xy = np.load(file, allow_pickle=False)
    except (OSError, ValueError):  # absent, unreadable or damaged: compute it again
        return None
    ok = xy.dtype == np.float32 and xy.shape == (m, 2) and np.isfinite(xy).all()
    if ok:
        with contextlib.suppress(OSError):
            os.utime(file)  # used now: the last to be pruned
    return xy if ok else None


def _write_disk(key: str, xy: np.ndarray) -> None:
    folder = cache_dir()
    part = folder / f"{key}.{os.getpid()}.{threading.get_ident()}.part"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(part, "wb") as f:
            np.save(f, xy, allow_pickle=False)
        os.replace(part, folder / f"{key}.npy")  # readers never see half a file
    except OSError:  # a read-only home must not break the map
        part.unlink(missing_ok=True)
        return
    _prune(folder, DISK_CACHE_BYTES)


def _prune(folder: Path, limit: int) -> None:
    """Delete the least recently used maps in ``folder`` (oldest modification time first) until
    the rest total at most ``limit`` bytes; the newest map always stays."""
    maps = []
    for file in folder.glob("*.npy"):
        with contextlib.suppress(OSError):  # another process pruned it first
            stat = file.stat()
            maps.append((stat.st_mtime_ns, stat.st_size, file))
    maps.sort(reverse=True)
    total = 0
    for i, (_, size, file) in enumerate(maps):
        total += size
        if total > limit and i > 0:
            with contextlib.suppress(OSError):
                file.unlink()


def _neighbour_fit(codes: np.ndarray, xy: np.ndarray) -> Placer:
    """Place new codes at the distance-weighted mean map position of their nearest codes (the
    neighbour index is built on the first call: most maps never place anything)."""
    from sklearn.neighbors import NearestNeighbors

    k = max(1, min(NEIGHBOURS, len(codes)))
    index: list[Any] = []

    def place(new: np.ndarray) -> np.ndarray:
        if not index:
            index.append(NearestNeighbors(n_neighbors=k).fit(codes))
        dist, idx = index[0].kneighbors(new)
        w = 1.0 / np.maximum(dist, 1e-6)
        return ((xy[idx] * w[..., None]).sum(1) / w.sum(1, keepdims=True)).astype(np.float32)

    return place


def _pca_fit(codes: np.ndarray) -> Placer:
    """The projection onto the first two principal components of ``codes`` (M, d)."""
    if codes.shape[0] < 2 or codes.shape[1] < 1:
        return lambda new: np.zeros((len(new), 2), np.float32)
    mean = codes.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd((codes - mean)[:20000], full_matrices=False)
    basis = np.zeros((codes.shape[1], 2), np.float32)
    basis[:, : min(2, len(vt))] = vt[:2].T
    return lambda new: ((new - mean) @ basis).astype(np.float32)


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
        Reuse (and store) the result for identical codes and settings: an in-memory LRU of 16,
        and ``.npy`` files in :func:`cache_dir` that outlive the kernel (a map read back from
        disk places new codes by their nearest mapped codes instead of UMAP's transform).

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
    stored = _read_disk(key, len(arr)) if use_cache else None
    if stored is not None:
        out, placer = stored, _neighbour_fit(arr, stored)
    elif method == "pca" or len(arr) < 4:
        report(f"projecting {len(arr):,} points (PCA)")
        placer = _pca_fit(arr)
        out = placer(arr)
    else:
        out, placer = _umap_fit(arr, seed, n_neighbors, min_dist, report)
    placer = _checked(placer, arr.shape[1])
    if use_cache:
        if stored is None:
            _write_disk(key, out)
        _remember(key, out, placer)
    report("projection ready")
    return out.copy(), placer


def _remember(key: str, xy: np.ndarray, placer: Placer) -> None:
    with _LOCK:
        _CACHE[key] = (xy.copy(), placer)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)


def _umap_fit(
    arr: np.ndarray,
    seed: int | None,
    n_neighbors: int,
    min_dist: float,
    report: Callable[[str], None],
) -> tuple[np.ndarray, Placer]:
    """UMAP of ``arr``; above ``FIT_POINTS`` fitted on a seeded subsample, the rest transformed."""
    report("importing umap")
    import umap  # lazy: ~10 s the first time

    m = len(arr)
    fitted = np.arange(m)
    if m > FIT_POINTS:
        fitted = np.sort(np.random.default_rng(seed or 0).choice(m, FIT_POINTS, replace=False))
    report(f"fitting UMAP on {len(fitted):,} of {m:,} points")
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=max(2, min(n_neighbors, len(fitted) - 1)),
        min_dist=min_dist,
        random_state=seed,
        init="spectral" if len(fitted) > n_neighbors + 2 else "random",
    )
    out = np.empty((m, 2), np.float32)
    out[fitted] = reducer.fit_transform(arr[fitted])
    rest = np.setdiff1d(np.arange(m), fitted, assume_unique=True)
    for start in range(0, len(rest), PLACE_BATCH):
        report(f"placing the other points on the map: {start:,} of {len(rest):,}")
        batch = rest[start : start + PLACE_BATCH]
        out[batch] = reducer.transform(arr[batch])
    return out, reducer.transform


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
