"""Batched inference: the one loop every step uses to run a model over many inputs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
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


# ---------------------------------------------------------------- faster search-time inference

_SPREAD = torch.tensor([[0.0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]])
"""Row j says which taps of a 3x3 kernel land on tap j of the equivalent 4-tap transposed kernel."""


class UpsampleConv(nn.Module):
    """A nearest 2x upsampling followed by a 3x3 convolution (stride 1, zero padding 1), run as
    one stride-2 4x4 transposed convolution: the same outputs (to float rounding) from 16 instead
    of 36 multiply-adds per output pixel and input channel, and no upsampled tensor.

    Output pixel (2i + a, 2j + b) of the pair only sees input rows i - 1 + a .. i + a and columns
    likewise, with the 3x3 kernel's taps summed where two of them fall on the same input pixel;
    a transposed convolution with that 4x4 kernel gives exactly those sums. Inputs whose
    upsampled size is not twice theirs go through the original pair.

    Parameters
    ----------
    upsample : nn.Upsample
        ``mode="nearest"``, ``scale_factor=2`` or a ``size``.
    conv : nn.Conv2d
        3x3, stride 1, padding 1, no dilation or groups, zero padding.
    """

    def __init__(self, upsample: nn.Upsample, conv: nn.Conv2d):
        super().__init__()
        self.upsample, self.conv = upsample, conv
        spread = _SPREAD.to(conv.weight)
        weight = torch.einsum("ka,oiab,lb->iokl", spread, conv.weight.detach(), spread)
        bias = None if conv.bias is None else conv.bias.detach()
        self.weight: torch.Tensor
        self.bias: torch.Tensor | None
        self.register_buffer("weight", weight.contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.upsample.size
        if size is not None:
            target = (size, size) if isinstance(size, int) else tuple(size)
            if target != (2 * x.shape[-2], 2 * x.shape[-1]):
                return self.conv(self.upsample(x))
        return F.conv_transpose2d(x, self.weight, self.bias, stride=2, padding=1)


def fusable(first: nn.Module, second: nn.Module) -> bool:
    """Whether ``first``, ``second`` is a pair :class:`UpsampleConv` can stand in for."""
    if not (type(first) is nn.Upsample and type(second) is nn.Conv2d):
        return False
    scale = first.scale_factor
    by_two = first.size is not None if scale is None else scale in (2, 2.0, (2, 2), (2.0, 2.0))
    return (
        first.mode == "nearest"
        and by_two
        and second.kernel_size == (3, 3)
        and second.stride == (1, 1)
        and second.padding == (1, 1)
        and second.dilation == (1, 1)
        and second.groups == 1
        and second.padding_mode == "zeros"
    )


@contextlib.contextmanager
def fused_upsampling(*modules: nn.Module) -> Iterator[int]:
    """Inside the block, every adjacent nearest-2x-upsample + 3x3-conv pair in an
    ``nn.Sequential`` of ``modules`` runs as one :class:`UpsampleConv` (built from the current
    weights); the original layers are put back after. Yields how many pairs were fused.

    For inference only: gradients still flow to the inputs (a gradient search works), not to
    the conv's weights.
    """
    swaps: list[tuple[nn.Sequential, list[tuple[str, nn.Module]]]] = []
    try:
        for seq in {
            id(s): s for m in modules for s in m.modules() if isinstance(s, nn.Sequential)
        }.values():
            layers = list(seq._modules.items())
            fused: list[tuple[str, nn.Module]] = []
            i = 0
            while i < len(layers):
                (key, layer), after = layers[i], layers[i + 1][1] if i + 1 < len(layers) else None
                if after is not None and fusable(layer, after):
                    fused.append((key, UpsampleConv(layer, after)))  # type: ignore[arg-type]
                    i += 2
                else:
                    fused.append((key, layer))
                    i += 1
            if len(fused) < len(layers):
                swaps.append((seq, layers))
                _replace(seq, fused)
        yield sum(len(old) - len(seq) for seq, old in swaps)
    finally:
        for seq, layers in swaps:
            _replace(seq, layers)


def _replace(seq: nn.Sequential, layers: list[tuple[str, nn.Module]]) -> None:
    seq._modules.clear()
    for key, layer in layers:
        seq._modules[key] = layer


@contextlib.contextmanager
def channels_last(*modules: nn.Module) -> Iterator[None]:
    """Inside the block the 4-D weights of ``modules`` are in channels-last memory order (oneDNN's
    fast layout for convolutions on the CPU); each is put back in its own order after."""
    params = [p for m in modules for p in m.parameters() if p.dim() == 4]
    was = [p.is_contiguous() for p in params]
    try:
        for p in params:
            p.data = p.data.contiguous(memory_format=torch.channels_last)
        yield
    finally:
        for p, contiguous in zip(params, was):
            if contiguous:
                p.data = p.data.contiguous()
