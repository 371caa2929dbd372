"""Engine side of live interpolation: paths, batched flip scans, region principal directions."""

from __future__ import annotations

import math

import pytest
import torch

from defuse_widgets.models import interpolation as interp


def test_lerp_endpoints_midpoint_and_batches() -> None:
    a, b = torch.tensor([0.0, 2.0]), torch.tensor([4.0, -2.0])
    assert torch.equal(interp.lerp(a, b, 0.0), a)
    assert torch.equal(interp.lerp(a, b, 1.0), b)
    assert torch.allclose(interp.lerp(a, b, 0.25), torch.tensor([1.0, 1.0]))
    codes = interp.lerp(a, b, torch.tensor([0.0, 0.5, 1.0]))
    assert codes.shape == (3, 2)
    assert torch.allclose(codes[1], torch.tensor([2.0, 0.0]))
    # a (1, d) code is accepted as (d,)
    assert interp.lerp(a[None], b[None], 0.5).shape == (2,)


@pytest.mark.parametrize(
    ("start", "end", "match"),
    [
        (torch.zeros(3), torch.zeros(4), "end: expected shape"),
        (torch.zeros(2, 3), torch.zeros(3), "start: expected one latent code"),
        (torch.tensor([0.0, float("nan")]), torch.zeros(2), "start: contains NaN"),
        (torch.zeros(2, dtype=torch.long), torch.zeros(2), "start: expected a floating-point"),
    ],
)
def test_lerp_rejects_bad_codes(start: torch.Tensor, end: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        interp.lerp(start, end, 0.5)


def test_interpolation_path() -> None:
    t, codes = interp.interpolation_path(torch.zeros(3), torch.ones(3), num=5)
    assert torch.allclose(t, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    assert torch.allclose(codes[:, 0], t)
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="num: expected an integer >= 2"):
            interp.interpolation_path(torch.zeros(3), torch.ones(3), num=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        (1.5, r"in \[0, 1\], got 1.5"),
        (-0.01, r"in \[0, 1\]"),
        ("0.5", "a number in"),
        (None, "a number in"),
        (True, "a number in"),
    ],
)
def test_check_position_rejects(value: object, match: str) -> None:
    with pytest.raises(ValueError, match=f"t: expected .*{match}"):
        interp.check_position("t", value, 0.0, 1.0)  # type: ignore[arg-type]


def test_check_position_accepts_ends() -> None:
    assert interp.check_position("t", 0, 0.0, 1.0) == 0.0
    assert interp.check_position("t", 1.0, 0.0, 1.0) == 1.0


def test_principal_directions_of_a_known_covariance() -> None:
    rot = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0)))[0]
    variances = torch.tensor([9.0, 4.0, 1.0, 0.25])
    cov = rot @ torch.diag(variances) @ rot.T
    dirs, scales = interp.principal_directions(cov, k=3)
    assert dirs.shape == (3, 4) and scales.shape == (3,)
    assert torch.allclose(scales, torch.tensor([3.0, 2.0, 1.0]), atol=1e-4)
    assert torch.allclose(dirs @ dirs.T, torch.eye(3), atol=1e-5)
    for j in range(3):  # each is an eigenvector, up to sign
        assert torch.allclose((dirs[j] @ rot[:, j]).abs(), torch.tensor(1.0), atol=1e-5)
        assert dirs[j][dirs[j].abs().argmax()] > 0  # deterministic sign
    # the same input gives the same answer with a flipped-sign eigen-solver result
    dirs2, _ = interp.principal_directions(cov.clone(), k=3)
    assert torch.equal(dirs, dirs2)


def test_principal_directions_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="covariance: expected a square"):
        interp.principal_directions(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="covariance: expected finite"):
        interp.principal_directions(torch.full((2, 2), float("nan")))
    with pytest.raises(ValueError, match=r"k: expected an integer in \[1, 2\], got 3"):
        interp.principal_directions(torch.eye(2), k=3)


def test_direction_codes_move_in_standard_deviations() -> None:
    mean = torch.tensor([1.0, 1.0, 1.0])
    dirs, scales = interp.principal_directions(torch.diag(torch.tensor([4.0, 1.0, 0.0])), k=2)
    code = interp.direction_codes(mean, dirs, scales, [1.0, 0.0])
    assert torch.allclose(code, torch.tensor([3.0, 1.0, 1.0]))  # 1 sd = 2 along axis 0
    code = interp.direction_codes(mean, dirs, scales, [0.0, -2.0])
    assert torch.allclose(code, torch.tensor([1.0, -1.0, 1.0]))
    many = interp.direction_codes(mean, dirs, scales, torch.zeros(5, 2))
    assert many.shape == (5, 3) and torch.allclose(many, mean.expand(5, 3))
    with pytest.raises(ValueError, match="coefficients: expected shape"):
        interp.direction_codes(mean, dirs, scales, [1.0, 2.0, 3.0])


def test_find_flips() -> None:
    pos = torch.linspace(0, 1, 5)
    flips = interp.find_flips(pos, torch.tensor([1, 1, 2, 2, 0]))
    assert flips == (interp.Flip(0.375, 1, 2), interp.Flip(0.875, 2, 0))
    assert interp.find_flips(pos, torch.zeros(5, dtype=torch.long)) == ()
    with pytest.raises(ValueError, match="predictions: expected shape"):
        interp.find_flips(pos, torch.zeros(4, dtype=torch.long))


class _Counting:
    """A decoder (codes -> 1x1xd images) that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return z[:, None, None, :]


def _sign_classifier(x: torch.Tensor) -> torch.Tensor:
    """Class 1 where the first coordinate is positive, else class 0 (logits)."""
    v = x.flatten(1)[:, 0]
    return torch.stack([-v, v], dim=1)


def test_scan_path_finds_the_flip_in_one_batched_pass() -> None:
    decode = _Counting()
    start, end = torch.tensor([-1.0, 0.0]), torch.tensor([3.0, 5.0])  # sign flips at t = 0.25
    scan = interp.scan_path(decode, _sign_classifier, start, end, num=64)
    assert decode.calls == 1
    assert scan.probs.shape == (64, 2)
    assert torch.allclose(scan.probs.sum(1), torch.ones(64))
    assert len(scan.flips) == 1
    flip = scan.flips[0]
    assert (flip.before, flip.after) == (0, 1)
    assert abs(flip.position - 0.25) <= 1 / 63
    assert scan.predictions[0] == 0 and scan.predictions[-1] == 1


def test_scan_directions_one_pass_for_all_axes() -> None:
    decode = _Counting()
    mean = torch.tensor([0.5, 0.0])
    dirs, scales = interp.principal_directions(torch.diag(torch.tensor([1.0, 0.25])), k=2)
    scans = interp.scan_directions(decode, _sign_classifier, mean, dirs, scales, limit=3, num=61)
    assert decode.calls == 1
    assert len(scans) == 2
    # along axis 0 (sd 1), the first coordinate 0.5 + c changes sign at c = -0.5
    assert [(f.before, f.after) for f in scans[0].flips] == [(0, 1)]
    assert abs(scans[0].flips[0].position + 0.5) <= 0.1
    assert scans[0].positions[0] == -3 and scans[0].positions[-1] == 3
    # axis 1 never changes the first coordinate: no flip
    assert scans[1].flips == ()
    with pytest.raises(ValueError, match="limit: expected a positive"):
        interp.scan_directions(decode, _sign_classifier, mean, dirs, scales, limit=-1.0)
    with pytest.raises(ValueError, match="limit: expected a positive"):
        interp.scan_directions(decode, _sign_classifier, mean, dirs, scales, limit=math.nan)


def test_scan_codes_rejects_empty() -> None:
    with pytest.raises(ValueError, match="codes: expected a non-empty"):
        interp.scan_codes(_Counting(), _sign_classifier, torch.zeros(0, 2))
