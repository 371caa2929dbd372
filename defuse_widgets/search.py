"""Identify: search a generator's latent space for natural images the classifier gets wrong.

:func:`identify` checks the inputs, encodes every image once (probing that the models fit the
data and each other), then hands the images in chunks to a search strategy
(:mod:`defuse_widgets.strategies`) through a :class:`SearchRun`, and assembles an
:class:`~defuse_widgets.errors.ErrorSet`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .checks import in_range, one_of, positive_int
from .device import resolve_device
from .errors import ErrorSet
from .generative import GeneratorAdapter, as_generator, check_logits
from .inference import batched, evaluating
from .models import seeded
from .strategies import SearchStrategy, as_strategy
from .validity import validity_score

Classifier = Callable[[torch.Tensor], torch.Tensor]
Found = tuple[torch.Tensor, ...]
"""The kept errors of a chunk: (codes, source_index, pred_label, confidence, validity)."""
FOUND_FIELDS = ("codes", "source_index", "pred_label", "confidence", "validity")
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def identify(
    classifier: nn.Module | Classifier,
    generator: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    strategy: str | SearchStrategy = "reference",
    *,
    min_validity: float | None = None,
    chunk_size: int | None = None,
    autocast: str | None = None,
    device: str | torch.device = "auto",
    seed: int = 0,
    progress: bool = True,
    split: str = "test",
    **knobs: Any,
) -> ErrorSet:
    """Search the latent space around each image's code for codes the classifier gets wrong.

    Parameters
    ----------
    classifier : nn.Module or callable
        Returns logits (N, K) for images (N, C, H, W).
    generator : Generator or model
        A :class:`~defuse_widgets.generative.Generator`, or a model
        :func:`~defuse_widgets.generative.as_generator` can wrap.
    images : torch.Tensor
        (N, C, H, W) float pixels in [0, 1].
    labels : torch.Tensor
        (N,) int64 true classes.
    strategy : str or SearchStrategy
        A strategy object (:class:`~defuse_widgets.ReferenceSearch`,
        :class:`~defuse_widgets.GaussianSearch`, :class:`~defuse_widgets.GradientSearch`), or
        its name ``"reference"``, ``"gaussian"`` or ``"gradient"`` with its knobs as ``knobs``.
    min_validity : float or None
        Drop errors whose :func:`~defuse_widgets.validity_score` is below this, in [0, 1].
    chunk_size : int or None
        Most codes decoded in one call (bounds memory); default 4096 on a GPU; on the CPU about
        65,536 pixels per call (1024 codes of 8x8, 83 of 28x28): larger calls spill the caches,
        and 28x28 calls of 1024 codes ran 2x slower per decode than calls of 100 on the 2-core
        build machine.
    autocast : {None, "bf16", "fp16"}
        Mixed precision for decoding and classifying.
    device : str or torch.device
        ``"auto"`` (CUDA, MPS, CPU) or a device; the models are moved there.
    seed : int
        Noise is drawn on the CPU from this seed, so a run repeats exactly on the CPU.
    progress : bool
        Show a progress bar.
    split : str
        Name of the split the images came from, recorded in the result.
    **knobs
        The named strategy's knobs, e.g. ``samples=50, max_per_image=3`` for ``"reference"``;
        a knob of another strategy, or any knob with a strategy object, is a TypeError.

    Returns
    -------
    ErrorSet
        The kept errors, grouped by source image.

    Examples
    --------
    >>> errors = identify(clf, vae, data.x_test, data.y_test, "reference")  # doctest: +SKIP
    >>> errors = identify(clf, vae, x, y, GradientSearch(steps=20))  # doctest: +SKIP
    """
    if not callable(classifier):
        raise TypeError(
            f"classifier: expected a torch module or callable returning logits (N, K), "
            f"got {type(classifier).__name__}"
        )
    gen = as_generator(generator)
    dev = resolve_device(device)
    search = as_strategy(strategy, knobs)
    chunk_size = positive_int(
        "chunk_size", _default_chunk(images, dev) if chunk_size is None else chunk_size
    )
    if min_validity is not None:
        in_range("min_validity", min_validity, 0, 1)
    one_of("autocast", autocast, (None, *AUTOCAST))
    x, y = _check_images(images, labels)
    modules = tuple(m for m in (classifier, *gen.modules) if isinstance(m, nn.Module))
    for m in modules:
        m.to(dev)
    start = time.perf_counter()
    with evaluating(*modules):
        mu, std, num_classes = _probe(classifier, gen, x, y, dev)
        search = search.resolve(mu.shape[1])
        run = SearchRun(classifier, gen, y, mu, std, dev, chunk_size, autocast)
        with seeded(seed):
            found = run.search_all(search, progress)
    settings = {
        **search.settings(),
        "min_validity": min_validity,
        "chunk_size": chunk_size,
        "autocast": autocast,
        "seed": seed,
        "device": str(dev),
        "num_classes": num_classes,
    }
    errors = _assemble(found, mu.cpu(), y, settings, run.decodes, split)
    errors.seconds = time.perf_counter() - start
    if min_validity is not None:
        errors = errors.subset(errors.validity >= min_validity)
    return errors


class SearchRun:
    """What a strategy searches with: the models, the images' codes, and the shared helpers.

    Attributes
    ----------
    classifier, generator : the models, on ``device`` and in eval mode.
    y : (N,) int64 true labels; mu, std : (N, d) encoder means and standard deviations, on
        ``device``.
    chunk_size : most codes decoded in one call. decodes : codes decoded so far.
    """

    def __init__(
        self,
        classifier: Classifier,
        generator: GeneratorAdapter,
        y: torch.Tensor,
        mu: torch.Tensor,
        std: torch.Tensor,
        device: torch.device,
        chunk_size: int,
        autocast: str | None = None,
    ):
        self.classifier, self.generator, self.device = classifier, generator, device
        self.y, self.mu, self.std = y.to(device), mu, std
        self.chunk_size = chunk_size
        self.decodes = 0
        dtype = AUTOCAST.get(autocast or "")
        self.autocast: Callable[[], AbstractContextManager] = (
            (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext
        )

    @property
    def latent_dim(self) -> int:
        """Size d of the latent codes."""
        return int(self.mu.shape[1])

    def search_all(self, strategy: SearchStrategy, progress: bool) -> dict[str, list[torch.Tensor]]:
        """Search every image with ``strategy``, in chunks of whole images; collect the columns."""
        found: dict[str, list[torch.Tensor]] = {key: [] for key in FOUND_FIELDS}
        n = len(self.mu)
        per_chunk = max(1, self.chunk_size // strategy.width(self.chunk_size))
        bar = tqdm(total=n, desc=f"identify ({strategy.name})", disable=not progress)
        for lo in range(0, n, per_chunk):
            idx = torch.arange(lo, min(n, lo + per_chunk), device=self.device)
            for key, values in zip(found, strategy.search_chunk(self, idx)):
                found[key].append(values)
            bar.update(len(idx))
            bar.set_postfix(errors=sum(len(c) for c in found["codes"]))
        bar.close()
        return found

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """Return float32 logits (M, K) of the decodes of codes ``z`` (M, d); count the decodes."""
        with self.autocast():
            logits = self.classifier(self.generator.decode(z))
        self.decodes += len(z)
        return logits.float()

    def record(self, z: torch.Tensor, source: torch.Tensor, logits: torch.Tensor) -> Found:
        """Return the columns of kept errors: codes ``z``, their sources and their ``logits``."""
        conf, pred = logits.softmax(1).max(1)
        validity = validity_score(self.generator, z, self.chunk_size)
        return z.float(), source, pred, conf, validity

    def concat(self, parts: list[Found]) -> Found:
        """Join a chunk's recorded parts column by column (empty columns when there are none)."""
        if parts:
            return tuple(torch.cat(column) for column in zip(*parts))
        long = torch.zeros(0, dtype=torch.long, device=self.device)
        flt = torch.zeros(0, device=self.device)
        return torch.zeros(0, self.latent_dim, device=self.device), long, long, flt, flt


def _default_chunk(images: Any, dev: torch.device) -> int:
    if dev.type != "cpu":
        return 4096
    pixels = int(images.shape[-1] * images.shape[-2]) if getattr(images, "ndim", 0) >= 2 else 64
    return max(16, 65536 // max(1, pixels))


def _check_images(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


def _probe(
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


def _assemble(
    found: dict[str, list[torch.Tensor]],
    mu: torch.Tensor,
    y: torch.Tensor,
    settings: dict[str, Any],
    decodes: int,
    split: str,
) -> ErrorSet:
    cols = {key: torch.cat(parts).detach().cpu() for key, parts in found.items()}
    order = torch.argsort(cols["source_index"], stable=True)
    cols = {key: t[order] for key, t in cols.items()}
    return ErrorSet(
        codes=cols["codes"],
        source_index=cols["source_index"],
        true_label=y[cols["source_index"]],
        pred_label=cols["pred_label"],
        confidence=cols["confidence"].float(),
        validity=cols["validity"].float(),
        perturbation=cols["codes"] - mu[cols["source_index"]],
        settings=settings,
        images_searched=len(y),
        decodes=decodes,
        split=split,
    )
