"""A model's batched forward over a whole split on a Ray actor pool: :func:`map_model`.

What a Ray-backed :class:`~defuse_widgets.session.session.DefuseSession` uses for its whole-split
predictions and encodings (``split_codes``, the audit's, ``evaluate()``'s). The driver puts a CPU
copy of the module and the images in Ray's object store once (:func:`ray.put`), and maps a pool
of actors over batches of row positions with Ray Data, as the search does
(:mod:`~defuse_widgets.distributed.backend`: the same connection and resource checks, pipeline,
restarts,
timeout and error naming the batch). Each actor loads the module once and runs its forward on
its batches under ``torch.inference_mode()``, in the mode (train/eval) it was shipped in; the
outputs come back in row order as one tensor.

With :mod:`~defuse_widgets.distributed.backend`, the only module that imports ray (when Ray work
runs).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from defuse_widgets.distributed.backend import RayBackend, gather, pipeline, ready
from defuse_widgets.utils.checks import positive_int


def map_model(
    module: nn.Module,
    inputs: torch.Tensor,
    backend: RayBackend,
    *,
    batch_size: int | None = None,
    progress: bool = False,
    desc: str = "map",
) -> torch.Tensor:
    """Run ``module(batch)`` over every row of ``inputs`` on a Ray actor pool.

    Parameters
    ----------
    module : nn.Module
        Its forward maps a batch (b, ...) to (b, ...) outputs, e.g.
        :class:`~defuse_widgets.models.inference.Probabilities` or
        :class:`~defuse_widgets.models.inference.EncoderMeans`; shipped once, as a CPU copy.
    inputs : torch.Tensor
        (n, ...) with n >= 1, on any device.
    backend : RayBackend
        The pool: actors, their resources (an actor with GPUs runs on its CUDA device), restarts,
        timeout and cluster address.
    batch_size : int or None
        Rows per actor call (the unit of retry); None: ``backend.batch_size``. Row ``i`` lands in
        batch ``i // batch_size``, the batches of a local ``batched`` loop with that size.
    progress, desc : bool, str
        A progress bar over the rows, and its label.

    Returns
    -------
    torch.Tensor
        (n, ...) the outputs in the order of ``inputs``, on the CPU.

    Raises
    ------
    RuntimeError
        Naming the batch, when the forward fails on an actor (nothing is returned).
    TimeoutError, ConnectionError, ValueError
        Past ``backend.timeout_s``; for an unreachable cluster; for a pool larger than it.
    """
    backend = _check(module, inputs, backend, batch_size)
    import ray

    ready(backend)
    n = len(inputs)
    job = ray.put(copy.deepcopy(module).cpu())  # kept referenced until the end: restarts re-read
    images = ray.put(inputs.detach().cpu())  # a tensor, strides kept: the kernels a local run picks
    step = backend.batch_size
    blocks = [np.arange(s, min(s + step, n), dtype=np.int64) for s in range(0, n, step)]
    bar = tqdm(total=n, desc=f"{desc} (ray)", disable=not progress, leave=False)
    context = ray.data.DataContext.get_current()
    ray_bars, context.enable_progress_bars = context.enable_progress_bars, False
    try:
        mapped = pipeline(backend, MapActor, {"job": [job], "images": [images]}, blocks)
        parts = list(gather(mapped, backend.timeout_s, bar, what="inference"))
    finally:
        context.enable_progress_bars = ray_bars
        bar.close()
    del job, images
    return _in_order(parts, n)


def _check(module: Any, inputs: Any, backend: Any, batch_size: int | None) -> RayBackend:
    """Check the arguments before any work; return the backend with the batch size to use."""
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"module: expected a torch.nn.Module whose forward maps a batch, got "
            f"{type(module).__name__}; wrap a function in a module (see inference.Probabilities)"
        )
    if not isinstance(inputs, torch.Tensor) or inputs.ndim < 1 or len(inputs) < 1:
        what = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(
            f"inputs: expected a tensor (n, ...) with n >= 1, got {what}; run empty inputs locally"
        )
    if not isinstance(backend, RayBackend):
        raise TypeError(
            f"backend: expected a RayBackend, got {backend!r}; e.g. "
            f"defuse_widgets.RayBackend(actors=2)"
        )
    if batch_size is None:
        return backend
    return dataclasses.replace(backend, batch_size=positive_int("batch_size", batch_size))


class MapActor:
    """A Ray Data callable class: loads the module once, then maps batches of row positions."""

    def __init__(self, job: list[Any], images: list[Any], device: str):
        import ray

        self.device = torch.device(device)
        resources = ray.get_runtime_context().get_assigned_resources()
        torch.set_num_threads(max(1, int(float(resources.get("CPU", 1)))))
        self.module = ray.get(job[0]).to(self.device)
        self.images = ray.get(images[0])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Map the rows ``batch["data"]``; return their positions and outputs."""
        rows = np.asarray(batch["data"], dtype=np.int64)
        try:
            x = self.images[torch.from_numpy(rows)].to(self.device)  # the driver's strides
            with torch.inference_mode():
                out = self.module(x).detach().cpu().numpy()
        except Exception as exc:
            raise RuntimeError(
                f"inference of image batch rows {int(rows.min())}..{int(rows.max())} "
                f"({len(rows)} images) failed on a Ray actor: {type(exc).__name__}: {exc}"
            ) from exc
        return {"rows": rows, "out": out, "images": np.ones(len(rows), dtype=np.int64)}


def _in_order(parts: list[dict[str, np.ndarray]], n: int) -> torch.Tensor:
    """Join the batches' outputs in row order; check that every row came back once."""
    if not parts:
        raise RuntimeError("backend='ray': the inference returned no batches")
    rows = np.concatenate([p["rows"] for p in parts])
    order = np.argsort(rows, kind="stable")
    if not np.array_equal(rows[order], np.arange(n)):
        raise RuntimeError(
            f"backend='ray': expected rows 0..{n - 1} back once each, got {len(rows)}"
        )
    out = np.concatenate([p["out"] for p in parts])[order]
    return torch.from_numpy(np.ascontiguousarray(out))
