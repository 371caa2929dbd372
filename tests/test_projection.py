"""projection.py (UMAP/PCA, cached) and imaging.py (uint8, PNG, sprites)."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch

from defuse_widgets import imaging
from defuse_widgets.projection import layout as projection


@pytest.fixture
def blobs() -> np.ndarray:
    g = np.random.default_rng(0)
    centers = g.normal(scale=6.0, size=(3, 8))
    return (centers[np.repeat(np.arange(3), 60)] + g.normal(size=(180, 8))).astype(np.float32)


def test_umap_projection_is_cached_and_separates_blobs(blobs: np.ndarray) -> None:
    projection.clear_cache()
    messages: list[str] = []
    xy = projection.project(torch.from_numpy(blobs), "umap", progress=messages.append)
    assert xy.shape == (180, 2) and xy.dtype == np.float32 and np.isfinite(xy).all()
    assert any("UMAP" in m for m in messages)
    # the three blobs stay apart: each point's nearest neighbour is in its own blob
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1) + np.eye(180) * 1e9
    labels = np.repeat(np.arange(3), 60)
    assert (labels[d.argmin(1)] == labels).mean() > 0.95
    # cached per error set (content): a second call returns the same layout at once
    assert projection.cached(blobs, "umap") is not None
    again = projection.project(blobs, "umap", progress=messages.append)
    assert np.array_equal(again, xy)
    assert projection.cached(blobs + 1, "umap") is None


def test_pca_and_tiny_inputs(blobs: np.ndarray) -> None:
    xy = projection.project(blobs, "pca", use_cache=False)
    assert xy.shape == (180, 2)
    assert projection.project(blobs[:2], "umap", use_cache=False).shape == (2, 2)
    assert projection.project(np.zeros((0, 8), np.float32), "pca").shape == (0, 2)
    with pytest.raises(ValueError, match="method"):
        projection.project(blobs, "tsne")
    with pytest.raises(ValueError, match="codes"):
        projection.project(np.zeros(5), "pca")


def test_fit_places_new_codes_on_the_same_map(blobs: np.ndarray) -> None:
    projection.clear_cache()
    labels = np.repeat(np.arange(3), 60)
    fit, new = blobs[::2], blobs[1::2]  # place one half on the map of the other
    xy, place = projection.fit(fit, "umap")
    placed = place(torch.from_numpy(new))
    assert placed.shape == (90, 2) and placed.dtype == np.float32
    assert np.array_equal(projection.project(fit, "umap"), xy)  # cached with its placer
    assert projection.fit(fit, "umap")[1] is place
    d = ((placed[:, None] - xy[None]) ** 2).sum(-1)
    assert (labels[::2][d.argmin(1)] == labels[1::2]).mean() > 0.95
    # PCA places with the same components: placing the fitted codes reproduces the map
    xy, place = projection.fit(fit, "pca")
    assert np.allclose(place(fit), xy, atol=1e-4)
    assert place(np.zeros((0, 8), np.float32)).shape == (0, 2)
    with pytest.raises(ValueError, match="dimension 8"):
        place(np.zeros((3, 5), np.float32))


@pytest.fixture
def disk(tmp_path, monkeypatch):
    """The package's cache moved to a temporary folder: its ``projections`` folder."""
    monkeypatch.setenv("DEFUSE_WIDGETS_CACHE", str(tmp_path))
    monkeypatch.delenv("DEFUSE_WIDGETS_PROJECTION_CACHE", raising=False)  # conftest.py sets it
    projection.clear_cache()
    return tmp_path / "projections"


def test_a_map_outlives_the_kernel_on_disk(blobs: np.ndarray, disk, monkeypatch) -> None:
    tmp_path = disk
    xy, _ = projection.fit(blobs, "umap", seed=0)
    assert len(list(tmp_path.glob("*.npy"))) == 1
    projection.clear_cache(disk=False)  # a restarted kernel: memory gone, files kept
    reads: list[str] = []
    real_read = projection._read_disk
    monkeypatch.setattr(projection, "_read_disk", lambda *a: reads.append(a[0]) or real_read(*a))
    assert np.array_equal(projection.cached(blobs, "umap", seed=0), xy)
    messages: list[str] = []
    again, place = projection.fit(blobs, "umap", seed=0, progress=messages.append)
    assert len(reads) == 1  # the explorer's cached() then fit(): one file read, not two
    monkeypatch.setattr(projection, "_read_disk", real_read)
    assert np.array_equal(again, xy) and not any("UMAP" in m for m in messages)
    # read back from disk, new codes land by their nearest mapped codes: on themselves here
    assert np.allclose(place(blobs[:5]), xy[:5], atol=1e-3)
    # a damaged file is ignored and replaced, never trusted
    file = next(tmp_path.glob("*.npy"))
    file.write_bytes(b"not an array")
    projection.clear_cache(disk=False)
    assert projection.cached(blobs, "umap", seed=0) is None
    assert projection.project(blobs, "pca").shape == (180, 2)
    projection.clear_cache()
    assert not list(tmp_path.glob("*.npy"))


def test_the_maps_on_disk_keep_to_a_size_bound(blobs: np.ndarray, disk, monkeypatch) -> None:
    """Past DISK_CACHE_BYTES the least recently used maps go; reading a map counts as a use."""
    sets = [blobs + i for i in range(4)]
    names: list[str] = []

    def write(i: int) -> None:  # map i, dated i seconds past a base, so the order is exact
        before = {f.name for f in disk.glob("*.npy")}
        projection.project(sets[i], "pca")
        (name,) = {f.name for f in disk.glob("*.npy")} - before
        names.append(name)
        os.utime(disk / name, (1_000_000 + i, 1_000_000 + i))

    write(0)
    size = (disk / names[0]).stat().st_size
    monkeypatch.setattr(projection, "DISK_CACHE_BYTES", 3 * size)
    write(1)
    write(2)
    assert len(list(disk.glob("*.npy"))) == 3  # at the bound, nothing goes
    projection.clear_cache(disk=False)  # a restarted kernel reads map 0: now the most recent
    assert projection.cached(sets[0], "pca") is not None
    write(3)
    assert {f.name for f in disk.glob("*.npy")} == {names[0], names[2], names[3]}
    projection.clear_cache(disk=False)
    assert projection.cached(sets[1], "pca") is None  # map 1 was the least recently used
    monkeypatch.setattr(projection, "DISK_CACHE_BYTES", 0)
    projection.project(blobs + 9, "pca")
    assert len(list(disk.glob("*.npy"))) == 1, "the newest map stays whatever the bound"


def test_large_sets_fit_umap_on_a_subsample_and_place_the_rest(
    blobs: np.ndarray, monkeypatch
) -> None:
    monkeypatch.setattr(projection, "FIT_POINTS", 90)
    monkeypatch.setattr(projection, "PLACE_BATCH", 40)
    messages: list[str] = []
    xy = projection.project(blobs, "umap", seed=0, use_cache=False, progress=messages.append)
    assert xy.shape == (180, 2) and np.isfinite(xy).all()
    assert "fitting UMAP on 90 of 180 points" in messages
    assert sum("placing the other points" in m for m in messages) == 3  # 90 placed, 40 a time
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1) + np.eye(180) * 1e9
    labels = np.repeat(np.arange(3), 60)
    assert (labels[d.argmin(1)] == labels).mean() > 0.95
    again = projection.project(blobs, "umap", seed=0, use_cache=False)
    assert np.array_equal(again, xy)  # the subsample is seeded


def test_sprite_sheet_tiles_row_by_row_with_black_fill() -> None:
    """The layout the suite's contact sheets and image grids rely on, for grey and colour images,
    fewer images than columns, one image and none."""
    rng = np.random.default_rng(0)
    for n, c, cols in [
        (7, 1, 3),
        (7, 3, 3),
        (2, 1, 5),
        (1, 3, 4),
        (1, 1, 1),
        (0, 1, 2),
        (9, 3, None),
    ]:
        u8 = rng.integers(1, 256, size=(n, 5, 4, c), dtype=np.uint8)  # no black pixel
        sheet = imaging.sprite_sheet(u8, columns=cols)
        k = cols or max(1, int(np.ceil(np.sqrt(max(n, 1)))))
        rows = max(1, -(-n // k))
        assert sheet.shape == (rows * 5, k * 4, c) and sheet.dtype == np.uint8
        for i in range(rows * k):
            tile = sheet[(i // k) * 5 : (i // k + 1) * 5, (i % k) * 4 : (i % k + 1) * 4]
            assert np.array_equal(tile, u8[i]) if i < n else not tile.any(), (n, c, cols, i)
    floats = torch.rand(3, 1, 8, 8)
    assert np.array_equal(
        imaging.sprite_sheet(floats, 2), imaging.sprite_sheet(imaging.to_uint8(floats), 2)
    )


def test_imaging_converts_and_downsamples() -> None:
    from PIL import Image

    x = torch.rand(5, 1, 8, 8)
    u8 = imaging.to_uint8(x)
    assert u8.shape == (5, 8, 8, 1) and u8.dtype == np.uint8
    assert np.abs(u8[..., 0] / 255.0 - x[:, 0].numpy()).max() < 0.003
    rgb = imaging.to_uint8(torch.rand(2, 3, 32, 32))
    assert imaging.downsample(rgb, 16).shape == (2, 16, 16, 3)
    assert imaging.downsample(u8, 32) is u8
    png = imaging.png_bytes(x[0], scale=4)
    assert Image.open(io.BytesIO(png)).size == (32, 32)
    sheet = imaging.sprite_sheet(x, columns=3)
    assert sheet.shape == (16, 24, 1)
    assert np.array_equal(sheet[8:16, 0:8], u8[3])
    block = np.zeros((1, 4, 4, 1), np.uint8)
    block[0, :2, :2] = 200
    assert imaging.downsample(block, 2)[0, :, :, 0].tolist() == [[200, 0], [0, 0]]
    with pytest.raises(ValueError, match="images"):
        imaging.to_uint8(torch.zeros(8, 8))
