"""Batched inference: the one loop every step uses to run a model over many inputs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from defuse_widgets.utils.device import module_device


@contextlib.contextmanager
def evaluating(*modules: nn.Module) -> Iterator[None]:
    """Put modules in eval mode inside the block and restore every submodule's own mode after.

    ``Module.train(mode)`` sets the mode recursively, so restoring only the outer modules would
    put a child that was in eval mode (e.g. a VAE wrapped in a user's module) in train mode.
    """
    modes = [(sub, sub.training) for m in modules for sub in m.modules()]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for sub, mode in modes:
            sub.training = mode


def batched(
    fn: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    *,
    device: torch.device | str,
    batch_size: int = 1024,
    empty_shape: tuple[int, ...] = (0,),
    empty_dtype: torch.dtype = torch.float32,
    progress: bool = False,
    desc: str = "",
) -> torch.Tensor:
    """Apply ``fn`` to ``inputs`` in batches on ``device`` under ``torch.inference_mode()``.

    Parameters
    ----------
    fn : maps a batch (b, ...) on ``device`` to a tensor (b, ...).
    inputs : (n, ...) tensor, on any device.
    device : where ``fn`` runs; each batch is moved there once.
    batch_size : inputs per call.
    empty_shape, empty_dtype : the result when ``inputs`` is empty.
    progress, desc : a tqdm bar (shown after 2 s) when ``progress``.

    Returns
    -------
    torch.Tensor
        (n, ...) the concatenated outputs, on the CPU.
    """
    chunks: Iterator[torch.Tensor] | tuple[torch.Tensor, ...] = inputs.split(batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=desc, unit="batch", delay=2, leave=False)
    with torch.inference_mode():
        parts = [fn(x.to(device)).cpu() for x in chunks]
    return torch.cat(parts) if parts else torch.zeros(empty_shape, dtype=empty_dtype)


def predict_labels(model: nn.Module, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """(n,) predicted classes of ``images`` (n, C, H, W) on the CPU, in eval mode, batched."""
    with evaluating(model):
        return batched(
            lambda x: model(x).argmax(1),
            images,
            device=module_device(model),
            batch_size=batch_size,
            empty_dtype=torch.long,
        )


def predict_proba(model: nn.Module, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """(n, K) softmax probabilities of ``model`` on ``images`` on the CPU, in eval mode, batched."""
    with evaluating(model):
        out = batched(
            lambda x: model(x).float().softmax(1),
            images,
            device=module_device(model),
            batch_size=batch_size,
        )
    return out


class Probabilities(nn.Module):
    """``classifier(x).float().softmax(1)`` as a module: what a session's ``predict`` maps."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x).float().softmax(1)


class Classes(nn.Module):
    """``classifier(x).argmax(1)`` as a module: the predicted classes of a split."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x).argmax(1)


class EncoderMeans(nn.Module):
    """``generator.encode(x)[0].float()`` as a module (the generator's modules registered, so
    ``.to()`` and copies move them): what a session's ``encode`` maps."""

    def __init__(self, generator: Any):
        super().__init__()
        self.generator = generator
        self.parts = nn.ModuleList(getattr(generator, "modules", ()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator.encode(x)[0].float()
