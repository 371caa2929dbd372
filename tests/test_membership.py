"""Reach: the real rows a region points to (regions/membership.py)."""

from __future__ import annotations

import pytest
import torch

from defuse_widgets.regions.distill import Region, RegionSet
from defuse_widgets.regions.membership import Reach, nearest_rows, reach


def region_set(assignments: list[int], ids: tuple[int, ...] = (0, 1)) -> RegionSet:
    regions = [
        Region(id=i, weight=0.5, size=assignments.count(i), mean=torch.zeros(2),
               covariance=torch.eye(2), transition=(0, 1), transition_share=1.0,
               mean_confidence=0.9, mean_validity=1.0, component=i)
        for i in ids
    ]  # fmt: skip
    return RegionSet(regions, torch.tensor(assignments), mixture=None, settings={})  # type: ignore[arg-type]


@pytest.fixture
def planted() -> dict[str, torch.Tensor]:
    """Two clusters of searched images (around (0, 0) and (10, 10)) and of rows, and far rows."""
    gen = torch.Generator().manual_seed(0)
    sources = torch.cat([torch.randn(5, 2, generator=gen), 10 + torch.randn(5, 2, generator=gen)])
    rows = torch.cat([
        0.5 * torch.randn(20, 2, generator=gen),  # rows 0-19 near cluster 0
        10 + 0.5 * torch.randn(20, 2, generator=gen),  # rows 20-39 near cluster 1
        torch.tensor([[-40.0, 40.0]]).repeat(10, 1) + torch.randn(10, 2, generator=gen),  # far
    ])  # fmt: skip
    return {"sources": sources, "rows": rows}


def test_nearest_rows_are_the_k_closest_nearest_first():
    points = torch.tensor([[0.0], [3.0], [1.0], [10.0]])
    near = nearest_rows(torch.tensor([[0.2], [9.0]]), points, 2)
    assert near.tolist() == [[0, 2], [3, 1]]
    assert nearest_rows(torch.tensor([[0.0]]), points, 10).shape == (1, 4)  # k capped at N
    assert nearest_rows(torch.zeros(0, 1), points, 2).shape == (0, 2)


def test_reach_is_the_rows_nearest_to_the_members_source_images(planted):
    # errors 0-5 come from searched images 0-4 (cluster 0) and are in region 0; errors 6-8 from
    # images 5-6 (cluster 1) in region 1; error 9 from image 9 in no region
    source_index = torch.tensor([0, 0, 1, 2, 3, 4, 5, 6, 6, 9])
    regions = region_set([0, 0, 0, 0, 0, 0, 1, 1, 1, -1])
    found = reach(regions, source_index, planted["sources"], planted["rows"], k=4)
    assert isinstance(found, Reach) and found.total == 50
    assert set(found.rows) == {0, 1}
    expected0 = nearest_rows(planted["sources"][:5], planted["rows"], 4).flatten().unique()
    assert torch.equal(found.rows[0], expected0)
    assert found.rows[0].max() < 20 and found.rows[1].min() >= 20  # each its own cluster's rows
    assert found.counts() == {0: len(expected0), 1: len(found.rows[1])}
    assert len(found.rows[1]) <= 2 * 4  # two source images
    assert not found.mask()[40:].any()  # the far rows are nobody's
    assert torch.equal(found.matrix([1, 0]), torch.stack([found.mask(1), found.mask(0)], 1))
    assert torch.equal(found.mask(), found.mask(0) | found.mask(1))


def test_reach_grows_with_k_and_can_be_asked_for_some_regions(planted):
    source_index = torch.tensor([0, 1, 5])
    regions = region_set([0, 0, 1])
    small = reach(regions, source_index, planted["sources"], planted["rows"], k=2)
    large = reach(regions, source_index, planted["sources"], planted["rows"], k=10)
    assert (small.mask(0) <= large.mask(0)).all() and large.counts()[0] > small.counts()[0]
    only = reach(regions, source_index, planted["sources"], planted["rows"], region_ids=[1], k=2)
    assert list(only.rows) == [1] and torch.equal(only.rows[1], small.rows[1])
    assert only.matrix([]).shape == (50, 0)


def test_a_region_without_members_reaches_nothing(planted):
    regions = region_set([0, 0])
    found = reach(regions, torch.tensor([0, 1]), planted["sources"], planted["rows"], k=3)
    assert found.counts()[1] == 0 and not found.mask(1).any()


@pytest.mark.parametrize(
    "change, match",
    [
        ({"k": 0}, "k"),
        ({"source_index": torch.tensor([0])}, "source_index: expected one index per error"),
        ({"source_index": torch.tensor([0, 99])}, "source_index: expected indices below 10"),
        ({"row_points": torch.zeros(5, 3)}, "source_points, row_points"),
        ({"region_ids": [7]}, "region_id"),
    ],
)
def test_reach_refuses_bad_input(planted, change, match):
    args = {"regions": region_set([0, 1]), "source_index": torch.tensor([0, 5]),
            "source_points": planted["sources"], "row_points": planted["rows"], "k": 3}  # fmt: skip
    args.update(change)
    with pytest.raises((ValueError, KeyError), match=match):
        reach(**args)


def test_reach_mask_names_an_unknown_region(planted):
    found = reach(region_set([0, 1]), torch.tensor([0, 5]), planted["sources"],
                  planted["rows"], k=3)  # fmt: skip
    with pytest.raises(KeyError, match="region_id"):
        found.mask(5)
