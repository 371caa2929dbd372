"""Identify: search a generator's latent space for natural images the classifier gets wrong.

:func:`identify` checks the inputs, encodes every image once (probing that the models fit the
data and each other), then hands the images in chunks to a search strategy
(:mod:`defuse_widgets.search.strategies`) through a :class:`SearchRun`, and assembles an
:class:`~defuse_widgets.search.errors.ErrorSet`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from defuse_widgets.data.dataset import stratified
from defuse_widgets.distributed.backend import RayBackend, ready
from defuse_widgets.models.generative import as_generator
from defuse_widgets.models.inference import channels_last as channels_last_weights
from defuse_widgets.models.inference import evaluating, fused_upsampling
from defuse_widgets.search.errors import ErrorSet
from defuse_widgets.search.inputs import (
    check_backend,
    check_images,
    check_indices,
    encode_in_index_order,
)
from defuse_widgets.search.on_ray import ray_search
from defuse_widgets.search.run import AUTOCAST, Classifier, SearchRun, resolve_autocast
from defuse_widgets.search.strategies import DEFAULT_STRATEGY, SearchStrategy, as_strategy
from defuse_widgets.utils.checks import in_range, one_of, positive_int
from defuse_widgets.utils.device import resolve_device
from defuse_widgets.utils.seeding import seeded

LIMIT_ORDERS = ("stratified", "first")
CPU_CHUNK_PIXELS, CPU_CHUNK_MAX = 262_144, 1024  # measured: docs/performance.md


def identify(
    classifier: nn.Module | Classifier,
    generator: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    strategy: str | SearchStrategy = DEFAULT_STRATEGY,
    *,
    indices: Sequence[int] | torch.Tensor | None = None,
    limit: int | None = None,
    limit_order: str = "stratified",
    min_validity: float | None = None,
    chunk_size: int | None = None,
    autocast: str | None = "auto",
    fuse: bool = True,
    channels_last: bool = True,
    device: str | torch.device = "auto",
    seed: int = 0,
    progress: bool = True,
    split: str = "test",
    backend: str | RayBackend = "local",
    ray_options: dict[str, Any] | None = None,
    on_errors: Callable[[ErrorSet], Any] | None = None,
    step_images: int | None = None,
    **knobs: Any,
) -> ErrorSet:
    """Search the latent space around each image's code for codes the classifier gets wrong.

    Parameters
    ----------
    classifier : nn.Module or callable
        Returns logits (N, K) for images (N, C, H, W).
    generator : Generator or model
        A :class:`~defuse_widgets.models.generative.Generator`, or a model
        :func:`~defuse_widgets.models.generative.as_generator` can wrap.
    images : torch.Tensor
        (N, C, H, W) float pixels in [0, 1].
    labels : torch.Tensor
        (N,) int64 true classes.
    strategy : str or SearchStrategy
        A strategy object (:class:`~defuse_widgets.ReferenceSearch`,
        :class:`~defuse_widgets.GaussianSearch`, :class:`~defuse_widgets.GradientSearch`), or
        its name ``"reference"``, ``"gaussian"`` or ``"gradient"`` with its knobs as ``knobs``.
        Default ``DEFAULT_STRATEGY`` (``"gaussian"``, chosen on the planted-bug suite; the
        paper's search is ``"reference"``).
    indices : sequence of int or torch.Tensor or None
        The positions in ``images`` of the images to search, in any order (distinct); None: all.
        An image's position is its index in the split: it keys the image's random draws and is
        its errors' ``source_index``, so a subset or a permutation finds the same errors per image.
    limit : int or None
        Search at most this many of the images (of ``indices`` when given); None: all of them.
    limit_order : {"stratified", "first"}
        How ``limit`` picks: ``"stratified"`` (default) a sample seeded by ``seed`` with every
        class in its share, so a split sorted by class (a folder of images per class) still
        gives every class; ``"first"`` the first ``limit`` in order.
    min_validity : float or None
        Drop errors whose :func:`~defuse_widgets.validity_score` is below this, in [0, 1].
    chunk_size : int or None
        Most codes decoded in one call (bounds memory); default 4096 on a GPU; on the CPU about
        262,144 pixels per call, at most 1024 codes (1024 of 8x8, 334 of 28x28): with the bf16,
        fused, channels-last defaults, 28x28 calls of 256-1024 codes gave 10-15% more decodes a
        second than calls of 83 on the 2-core build machine (in float32, calls of 1024 had run 2x
        slower than calls of 100 there).
    autocast : {"auto", None, "bf16", "fp16"}
        Mixed precision for decoding and classifying. ``"auto"`` (default): bf16 where the
        device computes it natively (a CPU with AVX512-BF16 or AMX, a CUDA GPU that supports
        it; about 2x more decodes a second on the CPU), else float32 (None). Every code bf16
        calls wrong is classified again in float32 and kept only if float32 agrees; codes bf16
        calls right near the boundary may still be float32 errors, so a few errors differ from a
        float32 search of the same seed (``docs/performance.md``).
    fuse : bool
        Run the generator's nearest-2x-upsample + 3x3-convolution pairs (in an ``nn.Sequential``)
        as one transposed convolution while searching
        (:func:`~defuse_widgets.models.inference.fused_upsampling`): the same images to float
        rounding, 2.25x fewer multiply-adds in those layers.
    channels_last : bool
        Hold the models' convolution weights in channels-last order while searching (oneDNN's and
        cuDNN's fast layout); each is put back after. Ignored on MPS.
    device : str or torch.device
        ``"auto"`` (CUDA, MPS, CPU) or a device; the models are moved there.
    seed : int
        Image ``i`` draws its noise (or restarts) on the CPU from its own generator, seeded from
        ``(seed, i)`` (:func:`~defuse_widgets.search.rng.image_seed`), so the errors of an image do
        not
        depend on the chunk size, the image order or the backend, and a run repeats exactly.
    progress : bool
        Show a progress bar.
    split : str
        Name of the split the images came from, recorded in the result.
    backend : {"local", "ray"} or RayBackend
        ``"local"`` searches in this process; ``"ray"`` (or a
        :class:`~defuse_widgets.distributed.backend.RayBackend`) shards the images over a pool of
        Ray
        actors (``pip install defuse-widgets[ray]``) and returns the same errors.
    ray_options : dict or None
        With ``backend="ray"``: the :class:`~defuse_widgets.distributed.backend.RayBackend` fields,
        e.g.
        ``{"actors": 4, "gpus_per_actor": 1, "address": "auto"}``.
    on_errors : callable or None
        Called on the searching thread with the errors found so far (an :class:`ErrorSet` whose
        ``images_searched`` says how many images it covers) after every ``step_images`` images,
        the last time with the whole result. The images are searched in their order (the
        ``limit`` sample's order: the split's, unless ``indices`` gives another), so each call's
        errors start with the previous call's, in the same order. Local backend only.
    step_images : int or None
        Images per ``on_errors`` call; default about a twentieth of the images (at least one
        chunk's worth).
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
    one_of("autocast", autocast, (None, "auto", *AUTOCAST))
    one_of("limit_order", limit_order, LIMIT_ORDERS)
    if limit is not None:
        positive_int("limit", limit)
    ray_backend = check_backend(backend, ray_options)
    if on_errors is not None and ray_backend is not None:
        raise ValueError(
            "on_errors: reports errors step by step on the local backend only, got backend='ray'"
        )
    if step_images is not None:
        positive_int("step_images", step_images)
    x, y = check_images(images, labels)
    rows = limit_rows(check_indices(indices, len(x)), y, limit, limit_order, seed)
    if ray_backend is not None:
        ready(ray_backend)
    modules = tuple(m for m in (classifier, *gen.modules) if isinstance(m, nn.Module))
    for m in modules:
        m.to(dev)
    start = time.perf_counter()
    autocast = resolve_autocast(autocast, dev)
    last = modules if channels_last and dev.type != "mps" else ()
    fused = tuple(m for m in gen.modules if isinstance(m, nn.Module)) if fuse else ()
    with evaluating(*modules), fused_upsampling(*fused), channels_last_weights(*last):
        mu, std, num_classes = encode_in_index_order(classifier, gen, x, y, rows, dev)
        search = search.resolve(mu.shape[1])
        run = SearchRun(classifier, gen, y[rows], mu, std, dev, chunk_size, autocast, seed, rows)
        settings = _settings(search, run, min_validity, fuse, bool(last), num_classes, ray_backend)
        if ray_backend is None:
            report = (
                None
                if on_errors is None
                else _reporter(on_errors, run, settings, split, min_validity, start)
            )
            step = step_images or max(chunk_size // search.width(), -(-len(rows) // 20))
            with seeded(seed):
                found = run.search_all(search, progress, step, report)
        else:
            found = ray_search(ray_backend, run, search, progress)
    errors = _assemble(found, run, settings, split)
    errors.seconds = time.perf_counter() - start
    if min_validity is not None:
        errors = errors.subset(errors.validity >= min_validity)
    return errors


def _settings(
    search: SearchStrategy,
    run: SearchRun,
    min_validity: float | None,
    fuse: bool,
    channels_last: bool,
    num_classes: int,
    ray_backend: RayBackend | None,
) -> dict[str, Any]:
    """What an error set records of how it was searched."""
    return {
        **search.settings(),
        "min_validity": min_validity,
        "chunk_size": run.chunk_size,
        "autocast": run.autocast_name,
        "fuse": fuse,
        "channels_last": channels_last,
        "seed": run.seed,
        "device": str(run.device) if ray_backend is None else ray_backend.device_name(),
        "num_classes": num_classes,
        "backend": "local" if ray_backend is None else "ray",
    }


def _reporter(
    on_errors: Callable[[ErrorSet], Any],
    run: SearchRun,
    settings: dict[str, Any],
    split: str,
    min_validity: float | None,
    start: float,
) -> Callable[[dict[str, list[torch.Tensor]], int], None]:
    """``on_step`` for :meth:`SearchRun.search_all`: the errors so far, as ``identify`` returns
    them, handed to ``on_errors``."""

    def report(found: dict[str, list[torch.Tensor]], searched: int) -> None:
        errors = _assemble(found, run, dict(settings), split, searched)
        errors.seconds = time.perf_counter() - start
        if min_validity is not None:
            errors = errors.subset(errors.validity >= min_validity)
        on_errors(errors)

    return report


def limit_rows(
    rows: torch.Tensor, y: torch.Tensor, limit: int | None, order: str, seed: int
) -> torch.Tensor:
    """At most ``limit`` of the positions ``rows`` (B,): a seeded sample stratified by the labels
    ``y`` (N,) (``order="stratified"``), or the first ``limit`` (``"first"``); in ``rows`` order."""
    if limit is None or limit >= len(rows):
        return rows
    if order == "first":
        return rows[:limit]
    return rows[stratified(y[rows].cpu(), limit, seed)]


def _default_chunk(images: Any, dev: torch.device) -> int:
    if dev.type != "cpu":
        return 4096
    pixels = int(images.shape[-1] * images.shape[-2]) if getattr(images, "ndim", 0) >= 2 else 64
    return min(CPU_CHUNK_MAX, max(16, CPU_CHUNK_PIXELS // max(1, pixels)))


def _assemble(
    found: dict[str, list[torch.Tensor]],
    run: SearchRun,
    settings: dict[str, Any],
    split: str,
    searched: int | None = None,
) -> ErrorSet:
    """Join the columns, map rows to split indices and order the errors by source image
    (``searched``: the first images of the run they cover; default all)."""
    cols = {key: torch.cat(parts).detach().cpu() for key, parts in found.items()}
    rows = cols.pop("source_index")
    order = torch.argsort(run.index[rows], stable=True)
    rows, cols = rows[order], {key: t[order] for key, t in cols.items()}
    return ErrorSet(
        codes=cols["codes"],
        source_index=run.index[rows],
        true_label=run.y.cpu()[rows],
        pred_label=cols["pred_label"],
        confidence=cols["confidence"].float(),
        validity=cols["validity"].float(),
        perturbation=cols["codes"] - run.mu.cpu()[rows],
        settings=settings,
        images_searched=len(run.index) if searched is None else searched,
        decodes=run.decodes,
        split=split,
    )
