"""Validity: how natural a decoded image is, measured by the generator re-encoding its output."""

from __future__ import annotations

from typing import Any

import torch

from defuse_widgets.models.generative import as_generator
from defuse_widgets.models.inference import batched


def validity_score(generator: Any, codes: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """Score how natural the decoded images of ``codes`` are, in (0, 1].

    The generator re-encodes its own output: ``v = exp(-||mu(decode(z)) - z||^2 / (2 d))``, a
    Gaussian kernel on the per-coordinate RMS distance. Images on the generator's data manifold
    map back close to their code (v near 1); off-manifold decodes from codes far outside the
    training distribution drift (v falls towards 0; it is floored at the smallest positive
    float32, about 1.2e-38, so it never reaches 0).

    Parameters
    ----------
    generator : Generator or model
        A :class:`~defuse_widgets.models.generative.Generator`, or a model
        :func:`~defuse_widgets.models.generative.as_generator` can wrap.
    codes : torch.Tensor
        (M, d) latent codes, on the generator's device.
    chunk_size : int
        Most codes decoded in one call.

    Returns
    -------
    torch.Tensor
        (M,) float32 scores, on the device of ``codes``.
    """
    gen = as_generator(generator)
    if len(codes) == 0:
        return torch.zeros(0, device=codes.device)

    def score(z: torch.Tensor) -> torch.Tensor:
        return reencoding_validity(gen.encode(gen.decode(z))[0], z)

    return batched(score, codes, device=codes.device, batch_size=chunk_size).to(codes.device)


def reencoding_validity(reencoded: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """(M,) validity of codes (M, d) whose decodes re-encode to means ``reencoded`` (M, d)."""
    tiny = torch.finfo(torch.float32).tiny
    return torch.exp(-(reencoded.float() - codes.float()).pow(2).mean(1) / 2).clamp_min(tiny)
