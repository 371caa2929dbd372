"""The inputs of :func:`~defuse_widgets.search.identify.identify`: checked, probed, encoded once.

Each check names the argument, what it expects and what it got, and runs before any search work.
"""

from __future__ import annotations

from typing import Any

import torch

from defuse_widgets.distributed.backend import RayBackend, as_ray_backend
from defuse_widgets.models.generative import GeneratorAdapter, check_logits
from defuse_widgets.models.inference import batched
from defuse_widgets.search.run import Classifier


def check_images(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images: expected a tensor of shape (N, C, H, W), got {shape}")
    if len(images) == 0:
        raise ValueError("images: expected at least one image, got none")
    if not images.is_floating_point():
        raise ValueError(f"images: expected float pixels in [0, 1], got dtype {images.dtype}")
    labels = torch.as_tensor(labels)
    if labels.shape != (len(images),) or labels.is_floating_point():
        raise ValueError(
            f"labels: expected {len(images)} integer labels of shape ({len(images)},), "
            f"got {tuple(labels.shape)} {labels.dtype}"
        )
    if torch.isnan(images).any():
        raise ValueError("images: contain NaN pixels")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"images: expected pixel values in [0, 1], got min {lo:.3g} and max {hi:.3g}"
        )
    if int(labels.min()) < 0:
        raise ValueError(f"labels: expected class indices >= 0, got min {int(labels.min())}")
    return images.float(), labels.long()


def check_backend(backend: Any, ray_options: dict[str, Any] | None) -> RayBackend | None:
    """Return None for the local backend, or the checked Ray backend (without importing ray)."""
    if backend == "local" and ray_options is None:
        return None
    if backend == "local":
        raise TypeError(
            f"ray_options: expected None with backend='local', got {ray_options!r}; "
            f"pass backend='ray' to use them"
        )
    return as_ray_backend(backend, ray_options)


def check_indices(indices: Any, n: int) -> torch.Tensor:
    """Return the (B,) int64 CPU positions to search: all of them, or the checked ``indices``."""
    if indices is None:
        return torch.arange(n)
    try:
        rows = torch.as_tensor(indices)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"indices: expected a sequence of integers, got {indices!r}") from exc
    if rows.ndim != 1 or len(rows) == 0 or rows.is_floating_point() or rows.dtype == torch.bool:
        raise ValueError(
            f"indices: expected a non-empty 1-D sequence of integers, got shape "
            f"{tuple(rows.shape)} {rows.dtype}"
        )
    rows = rows.long().cpu()
    if int(rows.min()) < 0 or int(rows.max()) >= n:
        raise ValueError(
            f"indices: expected positions in [0, {n}), got min {int(rows.min())} and max "
            f"{int(rows.max())}"
        )
    if len(rows.unique()) != len(rows):
        raise ValueError(f"indices: expected distinct positions, got {len(rows)} with repeats")
    return rows


def encode_in_index_order(
    classifier: Classifier,
    gen: GeneratorAdapter,
    x: torch.Tensor,
    y: torch.Tensor,
    rows: torch.Tensor,
    dev: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Probe and encode the images ``rows`` in index order (so the encoder's batches, and its
    bits, do not depend on the order asked for); return mu, std (B, d) in the order of ``rows``."""
    order = rows.argsort()
    mu, std, num_classes = probe(classifier, gen, x[rows[order]], y[rows[order]], dev)
    back = order.argsort().to(mu.device)
    return mu[back], std[back], num_classes


def probe(
    classifier: Classifier,
    gen: GeneratorAdapter,
    x: torch.Tensor,
    y: torch.Tensor,
    dev: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Encode all images (batched) and check the models fit the data and each other."""
    shape = tuple(x.shape[1:])
    for arg, model in (
        ("generator", gen.modules[0] if gen.modules else None),
        ("classifier", classifier),
    ):
        expected = getattr(model, "image_shape", None)
        if expected is not None and tuple(expected) != shape:
            raise ValueError(
                f"{arg}: built for images of shape {tuple(expected)}, but the images searched are "
                f"{shape}"
            )

    def encode(xb: torch.Tensor) -> torch.Tensor:
        mu, logvar = gen.encode(xb)
        std = (0.5 * logvar.float()).exp() if logvar is not None else torch.ones_like(mu.float())
        return torch.cat([mu.float(), std], 1)

    try:
        both = batched(encode, x, device=dev).to(dev)
    except RuntimeError as exc:
        raise ValueError(
            f"generator: could not encode images of shape {shape}; does it fit them? ({exc})"
        ) from exc
    d = both.shape[1] // 2
    mu, std = both[:, :d].contiguous(), both[:, d:].contiguous()
    bad = (~torch.isfinite(mu).all(1)).nonzero().flatten()
    if len(bad):
        raise ValueError(
            f"generator.encode: returned NaN or infinite codes for images {bad[:5].tolist()}; "
            "check those images (pixels in [0, 1]?) and the encoder's weights (a diverged run?)"
        )
    with torch.inference_mode():
        decoded = gen.decode(mu[:2])
        if decoded.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"generator.decode: produces images of shape {tuple(decoded.shape[1:])}, "
                f"but the images searched are {shape}"
            )
        try:
            logits = classifier(decoded)
        except RuntimeError as exc:
            raise ValueError(
                f"classifier: could not classify images of shape {shape}; does it fit them? ({exc})"
            ) from exc
        check_logits(logits, len(decoded), int(y.max()) + 1)
    return mu, std, int(logits.shape[1])
