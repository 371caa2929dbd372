"""Test helpers for users' own test files: ``assert_suite`` turns a regression suite into an
assertion (pytest shows its message)."""

from __future__ import annotations

import os

import torch
from torch import nn

from defuse_widgets.data.dataset import ImageDataset
from defuse_widgets.suite.check import SuiteResult, check_suite, failure_line

__all__ = ["assert_suite"]


def assert_suite(
    model: nn.Module,
    path: str | os.PathLike,
    device: str | torch.device = "auto",
    data: ImageDataset | None = None,
) -> SuiteResult:
    """Check ``model`` against the suite at ``path``; AssertionError unless every region passes.

    The message names each failing region with its accuracy against its threshold, then the
    whole table. Arguments are those of :func:`~defuse_widgets.suite.check.check_suite`;
    returns its :class:`~defuse_widgets.suite.check.SuiteResult` when all regions pass.

    Examples
    --------
    >>> def test_no_regressions():  # doctest: +SKIP
    ...     dw.testing.assert_suite(load_my_model(), "tests/defuse-suite")
    """
    __tracebackhide__ = True  # pytest: report the caller's line
    result = check_suite(model, path, device=device, data=data)
    if not result.passed:
        lines = [failure_line(r) for r in result.failed]
        raise AssertionError(
            f"{len(lines)} of {len(result.regions)} regions of the suite {result.path} failed:\n"
            + "\n".join(f"  {line}" for line in lines)
            + f"\n\n{result.table()}"
        )
    return result
