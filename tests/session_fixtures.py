"""Helpers shared by the session, distill, labels, correct and persist tests (not a conftest).

Building blocks, kept small so the tests stay fast on a 2-core CPU:

- :func:`shared_errors`: one identify run on the first ``LIMIT`` digits test images with the
  reference strategy (cached per process; about 70 errors in about 2 s).
- :func:`new_session`: a session on the CPU over a *copy* of the shared classifier (the shared
  fixture must never be fine-tuned), optionally with the shared errors already in it.
- :func:`ready_session`: the same, distilled into at most ``MAX_REGIONS`` regions.
- :func:`make_errors`: a synthetic :class:`~defuse_widgets.search.errors.ErrorSet` from codes alone.
- :func:`state_equal`: bit-exact comparison of two state dicts.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

import defuse_widgets as dw
from defuse_widgets import ErrorSet

LIMIT = 60
IDENTIFY = {"samples": 30, "max_per_image": 3}
MAX_REGIONS = 6

_cache: dict[tuple[int, int, int], ErrorSet] = {}


def new_session(
    classifier: nn.Module,
    vae: nn.Module,
    data: dw.ImageDataset,
    errors: ErrorSet | None = None,
    seed: int = 0,
) -> dw.DefuseSession:
    """A CPU session over a copy of ``classifier``; ``errors`` (if given) stand in for identify."""
    s = dw.DefuseSession(
        copy.deepcopy(classifier), vae, data, device="cpu", seed=seed, progress=False
    )
    if errors is not None:
        s.errors = errors
    return s


def shared_errors(classifier: nn.Module, vae: nn.Module, data: dw.ImageDataset) -> ErrorSet:
    """The errors of one identify run on the first ``LIMIT`` test images (computed once)."""
    key = (id(classifier), id(vae), id(data))
    if key not in _cache:
        s = new_session(classifier, vae, data)
        _cache[key] = s.identify(
            strategy="reference", split="test", limit=LIMIT, limit_order="first", **IDENTIFY
        )
    return _cache[key]


def ready_session(
    classifier: nn.Module, vae: nn.Module, data: dw.ImageDataset, **distill: Any
) -> dw.DefuseSession:
    """A fresh session holding the shared errors, distilled (``max_regions=MAX_REGIONS``)."""
    s = new_session(classifier, vae, data, shared_errors(classifier, vae, data))
    distill.setdefault("max_regions", MAX_REGIONS)
    s.distill(**distill)
    return s


def label_true_class(s: dw.DefuseSession, region_id: int = 0) -> int:
    """Label a region with the true class of its dominant transition; returns the label."""
    assert s.regions is not None
    label = s.regions.get(region_id).transition[0]
    s.label(region_id, label)
    return label


def make_errors(
    codes: torch.Tensor,
    true_label: torch.Tensor | None = None,
    pred_label: torch.Tensor | None = None,
) -> ErrorSet:
    """A synthetic ErrorSet: every error 0 -> 1 unless labels are given; confidence 0.5 + i/(2m)."""
    codes = codes.float()
    m = len(codes)
    true_label = torch.zeros(m, dtype=torch.long) if true_label is None else true_label.long()
    pred_label = torch.ones(m, dtype=torch.long) if pred_label is None else pred_label.long()
    return ErrorSet(
        codes=codes,
        source_index=torch.arange(m),
        true_label=true_label,
        pred_label=pred_label,
        confidence=0.5 + torch.arange(m, dtype=torch.float32) / (2 * m),
        validity=1.0 - torch.arange(m, dtype=torch.float32) / (4 * m),
        perturbation=torch.zeros_like(codes),
        settings={"strategy": "synthetic"},
        images_searched=m,
        decodes=m,
    )


def state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """True when both state dicts have the same keys and bit-identical tensors."""
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k].cpu(), b[k].cpu()) for k in a
    )


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the model's state dict."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def flips(n: int, lost: int, gained: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Before/after correctness of ``n`` images: ``lost`` right->wrong, ``gained`` the reverse."""
    before = torch.ones(n, dtype=torch.bool)
    before[lost : lost + gained] = False
    after = before.clone()
    after[:lost] = False
    after[lost : lost + gained] = True
    return before, after
