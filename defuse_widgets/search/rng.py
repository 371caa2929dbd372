"""Per-image randomness: every image's draws come from its own generator, keyed by (seed, index).

A search never consumes one global stream in chunk order: image ``i`` of a search with seed ``s``
draws from ``torch.Generator().manual_seed(image_seed(s, i))``, so what is found for an image is
the same whatever the chunk size, the image order, the device count or the shard it lands on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

_MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One step of the splitmix64 mixer: a well-spread 64-bit value for each 64-bit input."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def image_seed(seed: int, index: int) -> int:
    """Return the 63-bit seed of image ``index``'s generator in a search seeded with ``seed``.

    Parameters
    ----------
    seed : int
        The search's seed.
    index : int
        The image's index in the searched split (not its position in a chunk).

    Returns
    -------
    int
        A seed in [0, 2**63) for ``torch.Generator.manual_seed``; distinct (seed, index) pairs
        give unrelated seeds.
    """
    return _splitmix64(_splitmix64(int(seed) & _MASK) ^ (int(index) & _MASK)) >> 1


def image_generator(seed: int, index: int) -> torch.Generator:
    """Return a fresh CPU generator for image ``index`` of a search seeded with ``seed``."""
    return torch.Generator().manual_seed(image_seed(seed, index))


def per_image(
    seed: int, indices: Iterable[int], draw: Callable[[torch.Generator], torch.Tensor]
) -> torch.Tensor:
    """Stack one draw per image, each from that image's own generator.

    Parameters
    ----------
    seed : int
        The search's seed.
    indices : iterable of int
        (B,) the images' indices in the searched split.
    draw : callable
        Maps a CPU generator to one image's tensor, e.g. its (Q, d) noise.

    Returns
    -------
    torch.Tensor
        (B, ...) the draws, on the CPU.
    """
    return torch.stack([draw(image_generator(seed, int(i))) for i in indices])


def beta_noise(generator: torch.Generator, samples: int, dim: int, beta: float) -> torch.Tensor:
    """Return (samples, dim) Beta(beta, beta) draws from ``generator``.

    Beta(a, b) is the first coordinate of a Dirichlet(a, b) draw, which is how
    ``torch.distributions.Beta`` samples too, but with an explicit generator.
    """
    concentration = torch.full((samples, dim, 2), float(beta))
    return torch._sample_dirichlet(concentration, generator=generator)[..., 0]


def normal_noise(generator: torch.Generator, samples: int, dim: int) -> torch.Tensor:
    """Return (samples, dim) standard normal draws from ``generator``."""
    return torch.randn(samples, dim, generator=generator)
