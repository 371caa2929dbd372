"""The region samples a fine-tuning round trains on: scaled per region by measurement, and
filtered so that each one means what its region's label says.

- **Scale per region**: the real validation images inside a region lie at some typical
  Mahalanobis distance from its mean; the scale is chosen so samples lie at that distance too
  (median squared distance / d, within [``MIN_SCALE``, ``MAX_SCALE``]). With fewer than
  ``MIN_IMAGES`` such images the default scale is used.
- **Inside the region**: draws outside the ellipsoid holding ``COVERAGE`` of the region's
  Gaussian are drawn again.
- **Natural**: decoded samples whose validity (the generator re-encoding its output) falls below
  the ``VALIDITY_QUANTILE`` of real training images' validity are dropped.
- **Vetted** (optional): with a labeler, decoded samples it does not confidently call the
  region's label are dropped too. A region's draws reach past what its label describes (a region
  of 3s mistaken for 7s also decodes 7s and 8s), and training those as 3s teaches real 8s to be 3s.
- **Decoded once a round** (:class:`Replay`): the batches depend on the seed, not on the weights
  being trained, so the settings a round tries (``update="best"``, ``auto``) replay one stream.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from defuse_widgets.models.validity import reencoding_validity, validity_score
from defuse_widgets.regions.distill import DEFAULT_SCALE, RegionSet
from defuse_widgets.regions.labels import LabelerLike, as_labeler
from defuse_widgets.regions.mixture import mahalanobis_sq

MIN_SCALE, MAX_SCALE = 0.01, 1.0
MIN_IMAGES = 5
VALIDITY_QUANTILE = 0.01
VALIDITY_PROBE = 512
MAX_TRIES = 4
Batches = Callable[[int], tuple[torch.Tensor, torch.Tensor]]
"""``n -> (images, labels)``: up to ``n`` region samples and their labels (or codes, for a draw)."""
REPLAY_BYTES = 256 * 2**20
"""The most a round keeps of decoded region batches to replay (:class:`Replay`); a setting whose
batches would take more decodes its own."""


def measured_scales(
    regions: RegionSet,
    targets: Mapping[int, int],
    codes: torch.Tensor | None,
    inside: torch.Tensor | None,
) -> dict[int, float]:
    """Region id -> sampling scale, from the codes (N, d) of the validation images and which of
    them lie in each target region ((N, T) bool, see :func:`inside_regions`); the default
    scale where too few images are inside."""
    out = {}
    for i, rid in enumerate(targets):
        out[rid] = DEFAULT_SCALE
        if codes is None or inside is None:
            continue
        region = regions.get(rid)
        if int(inside[:, i].sum()) < MIN_IMAGES:
            continue
        d2 = mahalanobis_sq(codes[inside[:, i]], region.mean, region.covariance)
        value = float(d2.median()) / codes.shape[1]
        out[rid] = min(MAX_SCALE, max(MIN_SCALE, value))
    return out


def validity_floor(
    generator: Any, real_codes: torch.Tensor, seed: int, device: torch.device
) -> float:
    """The ``VALIDITY_QUANTILE`` of the validity of (at most ``VALIDITY_PROBE``) real codes,
    decoded on ``device`` (the generator's)."""
    if len(real_codes) == 0:
        return 0.0
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(real_codes), generator=gen)[:VALIDITY_PROBE]
    with torch.inference_mode():
        scores = validity_score(generator, real_codes[pick].to(device)).cpu()
    return float(torch.quantile(scores, VALIDITY_QUANTILE))


def sample_vetter(labeler: LabelerLike) -> Callable[[torch.Tensor], torch.Tensor]:
    """``images -> (n,) class per image``: the per-image mode of ``as_labeler(labeler,
    "images")`` (kept for callers that only check a labeler can vet)."""
    return as_labeler(labeler, "images").label_images


def region_batches(
    draw: Batches,
    generator: Any,
    min_validity: float,
    vet: Callable[[torch.Tensor], torch.Tensor] | None = None,
    tally: dict[str, int] | None = None,
) -> Batches:
    """``n -> (images, labels)``: decoded draws whose validity is at least ``min_validity``
    (and, with ``vet``, a labeler's ``label_images``, that it labels with their region's label).

    Up to ``MAX_TRIES`` draws of ``n`` are made to fill the batch; if too few pass, the batch is
    what passed; if none is natural, the single most natural sample, so a step always has one
    (of those the labeler vets: none at all when it vets none). ``tally`` counts the
    ``"drawn"`` and ``"kept"`` samples.
    """

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        kept_x, kept_y, best = [], [], None
        for _ in range(MAX_TRIES):
            codes, labels = draw(n)
            with torch.no_grad():
                images = generator.decode(codes).float()
                mu, _ = generator.encode(images)
            validity = reencoding_validity(mu, codes)
            vetted = torch.ones_like(labels, dtype=torch.bool)
            if vet is not None:
                vetted = vet(images).to(labels.device) == labels
            ok = vetted & (validity >= min_validity)
            if tally is not None:
                tally["drawn"] = tally.get("drawn", 0) + n
                tally["kept"] = tally.get("kept", 0) + int(ok.sum())
            kept_x.append(images[ok])
            kept_y.append(labels[ok])
            if best is None and vetted.any():
                top = int(torch.where(vetted, validity, -torch.inf).argmax())
                best = images[top : top + 1], labels[top : top + 1]
            if sum(len(y) for y in kept_y) >= n:
                break
        x, y = torch.cat(kept_x)[:n], torch.cat(kept_y)[:n]
        return (x, y) if len(y) or best is None else best

    return batch


@dataclass
class Replay:
    """One seeded stream of region batches, decoded once and replayed to each reader.

    Why: a round tries several settings with the same seed (``update="best"`` trains two,
    ``auto`` eight), each drawing the same batches in the same order; decoding, re-encoding and
    vetting them took about 40% of a digits round. A reader's ``i``-th call returns the stream's
    ``i``-th batch (decoded on first use), so each setting trains on exactly what it drew before.
    """

    source: Batches
    batches: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def reader(self) -> Batches:
        """``n -> (images, labels)``: the stream from its first batch (``n`` is the same for
        every call of one stream: the settings' batch size)."""
        position = itertools.count()

        def read(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            i = next(position)
            while len(self.batches) <= i:
                self.batches.append(self.source(n))
            return self.batches[i]

        return read
