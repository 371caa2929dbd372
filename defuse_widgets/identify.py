"""Identify: search a generator's latent space for natural images the classifier gets wrong."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .device import resolve_device
from .generative import GeneratorAdapter, as_generator, check_logits, evaluating
from .models import seeded

STRATEGIES = ("reference", "gaussian", "gradient")
ERROR_FIELDS = (
    "codes",
    "source_index",
    "true_label",
    "pred_label",
    "confidence",
    "validity",
    "perturbation",
)


@dataclass(eq=False)
class ErrorSet:
    """Errors found by :func:`identify`, as CPU tensors with one row per kept error.

    Attributes
    ----------
    codes : (M, d) float32 latent codes whose decoded image the classifier gets wrong.
    source_index : (M,) int64 index of the searched image each error came from.
    true_label, pred_label : (M,) int64.
    confidence : (M,) float32 softmax probability of the predicted label.
    validity : (M,) float32 in (0, 1]; see :func:`validity_score`.
    perturbation : (M, d) float32 ``codes - mu(source)``.
    settings : the search settings; ``images_searched``, ``decodes``, ``seconds``: counts.
    """

    codes: torch.Tensor
    source_index: torch.Tensor
    true_label: torch.Tensor
    pred_label: torch.Tensor
    confidence: torch.Tensor
    validity: torch.Tensor
    perturbation: torch.Tensor
    settings: dict[str, Any] = field(default_factory=dict)
    images_searched: int = 0
    decodes: int = 0
    seconds: float = 0.0
    split: str = "test"

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def latent_dim(self) -> int:
        return int(self.codes.shape[1])

    def tensors(self) -> dict[str, torch.Tensor]:
        """The per-error tensors by field name."""
        return {name: getattr(self, name) for name in ERROR_FIELDS}

    def subset(self, index: torch.Tensor) -> ErrorSet:
        """A new ErrorSet with the rows ``index`` (a bool mask or integer indices) selects."""
        rows = {name: t[index] for name, t in self.tensors().items()}
        return ErrorSet(
            **rows,
            settings=dict(self.settings),
            images_searched=self.images_searched,
            decodes=self.decodes,
            seconds=self.seconds,
            split=self.split,
        )

    def transitions(self) -> dict[tuple[int, int], int]:
        """Counts of (true, predicted) label pairs, most frequent first."""
        pairs = torch.stack([self.true_label, self.pred_label], 1)
        uniq, counts = pairs.unique(dim=0, return_counts=True)
        order = counts.argsort(descending=True)
        return {(int(uniq[i, 0]), int(uniq[i, 1])): int(counts[i]) for i in order}

    def __repr__(self) -> str:
        return (
            f"ErrorSet({len(self)} errors from {self.images_searched} {self.split} images, "
            f"strategy={self.settings.get('strategy')!r}, decodes={self.decodes})"
        )


def identify(
    classifier: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    generator: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    strategy: str = "reference",
    *,
    samples: int = 100,
    max_per_image: int = 5,
    beta: float = 50.0,
    radius: float = 1.0,
    restarts: int = 8,
    steps: int = 10,
    step_size: float | None = None,
    max_distance: float | None = None,
    min_validity: float | None = None,
    chunk_size: int | None = None,
    autocast: str | None = None,
    device: str | torch.device = "auto",
    seed: int = 0,
    progress: bool = True,
    split: str = "test",
) -> ErrorSet:
    """Search the latent space around each image's code for codes the classifier gets wrong.

    Parameters
    ----------
    classifier : returns logits (N, K) for images (N, C, H, W).
    generator : a :class:`~defuse_widgets.generative.Generator`, or a model
        :func:`~defuse_widgets.generative.as_generator` can wrap.
    images : (N, C, H, W) float in [0, 1]; labels : (N,) int64 true classes.
    strategy :
        ``"reference"``: the method's published search: ``samples`` (Q) noise vectors per image with
        each coordinate from Beta(``beta``, ``beta``) added to the encoder mean; errors are kept
        in order of increasing noise norm, so work on an image stops once ``max_per_image`` (k)
        are kept and they are the k smallest-norm errors among the Q draws.
        ``"gaussian"``: zero-mean noise ``radius * sigma(x) * eps`` with the encoder's posterior
        standard deviation sigma (1 for an encoder without logvar), same budget and keep rule.
        ``"gradient"``: ``restarts`` starting points per image near the encoder mean, each moved
        ``steps`` times along the normalized gradient of the classifier's loss through the
        decoder, projected onto the L2 ball of radius ``max_distance`` around the mean; a restart
        stops at its first misclassified code.
    max_per_image : k, errors kept per image at most. samples : Q, draws per image.
    step_size, max_distance : gradient steps and bound, in latent units; default to
        ``0.25 * sqrt(d)`` and ``0.5 * sqrt(d)`` (the reference noise's mean norm is
        ``0.5 * sqrt(d)``).
    min_validity : drop errors whose :func:`validity_score` is below this.
    chunk_size : most codes decoded in one call (bounds memory); default 4096 on a GPU; on the
        CPU about 65,536 pixels per call (1024 codes of 8x8, 83 of 28x28): larger calls spill the
        caches, and 28x28 calls of 1024 codes ran 2x slower per decode than calls of 100 on the
        2-core build machine.
    autocast : None, "bf16" or "fp16": mixed precision for decoding and classifying.
    device : "auto" (CUDA, MPS, CPU) or a device; the models are moved there.
    seed : noise is drawn on the CPU from this seed, so a run repeats exactly on the CPU.

    Returns
    -------
    ErrorSet

    Examples
    --------
    >>> errors = identify(clf, vae, data.x_test, data.y_test, "reference")  # doctest: +SKIP
    """
    if not callable(classifier):
        raise TypeError(
            f"classifier: expected a torch module or callable returning logits (N, K), "
            f"got {type(classifier).__name__}"
        )
    gen = as_generator(generator)
    dev = resolve_device(device)
    for name, value in (("step_size", step_size), ("max_distance", max_distance)):
        if value is not None and not value > 0:
            raise ValueError(f"{name}: expected a positive number of latent units, got {value!r}")
    if chunk_size is None:
        chunk_size = _default_chunk(images, dev)
    settings = _check_settings(
        strategy,
        samples,
        max_per_image,
        beta,
        radius,
        restarts,
        steps,
        min_validity,
        chunk_size,
        autocast,
    )
    x, y = _check_images(images, labels)
    modules = tuple(m for m in (classifier, *gen.modules) if isinstance(m, nn.Module))
    for m in modules:
        m.to(dev)
    start = time.perf_counter()
    with evaluating(*modules):
        mu, std, num_classes = _probe(classifier, gen, x, y, dev)
        d = mu.shape[1]
        settings["step_size"] = step_size or 0.25 * math.sqrt(d)
        settings["max_distance"] = max_distance or 0.5 * math.sqrt(d)
        search = _Search(classifier, gen, y, mu, std, settings, dev, progress)
        with seeded(seed):
            found = search.run()
    errors = _assemble(found, mu.cpu(), y, settings, search.decodes, split)
    errors.seconds = time.perf_counter() - start
    errors.settings.update(seed=seed, device=str(dev), num_classes=num_classes)
    if min_validity is not None:
        errors = errors.subset(errors.validity >= min_validity)
    return errors


def _default_chunk(images: Any, dev: torch.device) -> int:
    if dev.type != "cpu":
        return 4096
    pixels = int(images.shape[-1] * images.shape[-2]) if getattr(images, "ndim", 0) >= 2 else 64
    return max(16, 65536 // max(1, pixels))


def _check_settings(
    strategy: str,
    samples: int,
    k: int,
    beta: float,
    radius: float,
    restarts: int,
    steps: int,
    min_validity: float | None,
    chunk_size: int,
    autocast: str | None,
) -> dict[str, Any]:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
    for name, value in (
        ("samples", samples),
        ("max_per_image", k),
        ("restarts", restarts),
        ("steps", steps),
        ("chunk_size", chunk_size),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if strategy != "gradient" and k > samples:
        raise ValueError(f"max_per_image: expected at most samples={samples} (k <= Q), got {k}")
    if not (beta > 0 and radius > 0):
        raise ValueError(f"beta and radius: expected positive numbers, got {beta} and {radius}")
    if min_validity is not None and not 0 <= min_validity <= 1:
        raise ValueError(f"min_validity: expected a number in [0, 1], got {min_validity}")
    if autocast not in (None, "bf16", "fp16"):
        raise ValueError(f"autocast: expected None, 'bf16' or 'fp16', got {autocast!r}")
    return dict(
        strategy=strategy,
        samples=samples,
        max_per_image=k,
        beta=beta,
        radius=radius,
        restarts=restarts,
        steps=steps,
        min_validity=min_validity,
        chunk_size=chunk_size,
        autocast=autocast,
    )


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
    classifier: Callable, gen: GeneratorAdapter, x: torch.Tensor, y: torch.Tensor, dev: torch.device
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
    with torch.inference_mode():
        mus, stds = [], []
        for xb in x.split(1024):
            try:
                mu, logvar = gen.encode(xb.to(dev))
            except RuntimeError as exc:
                raise ValueError(
                    f"generator: could not encode images of shape {shape}; does it fit them? "
                    f"({exc})"
                ) from exc
            mus.append(mu.float())
            stds.append((0.5 * logvar.float()).exp() if logvar is not None else torch.ones_like(mu))
        mu, std = torch.cat(mus), torch.cat(stds)
        bad = (~torch.isfinite(mu).all(1)).nonzero().flatten()
        if len(bad):
            raise ValueError(
                f"generator.encode: returned NaN or infinite codes for images {bad[:5].tolist()}"
            )
        decoded = gen.decode(mu[:2])
        if decoded.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"generator.decode: produces images of shape {tuple(decoded.shape[1:])}, "
                f"but the images searched are {tuple(x.shape[1:])}"
            )
        try:
            logits = classifier(decoded)
        except RuntimeError as exc:
            raise ValueError(
                f"classifier: could not classify images of shape {shape}; does it fit them? ({exc})"
            ) from exc
        num_classes = int(y.max()) + 1
        check_logits(logits, len(decoded), num_classes)
    return mu, std, int(logits.shape[1])


class _Search:
    """Runs one strategy over all images in chunks and collects the kept errors."""

    def __init__(
        self,
        classifier: Callable,
        gen: GeneratorAdapter,
        y: torch.Tensor,
        mu: torch.Tensor,
        std: torch.Tensor,
        settings: dict[str, Any],
        dev: torch.device,
        progress: bool,
    ):
        self.classifier, self.gen, self.settings, self.dev = classifier, gen, settings, dev
        self.y, self.mu, self.std = y.to(dev), mu, std
        self.k = settings["max_per_image"]
        self.decodes = 0
        self.progress = progress
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings["autocast"] or "")
        self.autocast: Callable[[], AbstractContextManager] = (
            (lambda: torch.autocast(dev.type, dtype=dtype)) if dtype else nullcontext
        )

    def run(self) -> dict[str, list[torch.Tensor]]:
        found: dict[str, list[torch.Tensor]] = {
            "codes": [],
            "source_index": [],
            "pred_label": [],
            "confidence": [],
            "validity": [],
        }
        n = len(self.mu)
        images_per_chunk = max(1, self.settings["chunk_size"] // self._width())
        bar = tqdm(
            total=n, desc=f"identify ({self.settings['strategy']})", disable=not self.progress
        )
        for lo in range(0, n, images_per_chunk):
            idx = torch.arange(lo, min(n, lo + images_per_chunk), device=self.dev)
            chunk = (
                self._gradient(idx)
                if self.settings["strategy"] == "gradient"
                else self._sampling(idx)
            )
            for key, values in zip(found, chunk):
                found[key].append(values)
            bar.update(len(idx))
            bar.set_postfix(errors=sum(len(c) for c in found["codes"]))
        bar.close()
        return found

    def _width(self) -> int:
        """Codes decoded per image in one call."""
        if self.settings["strategy"] == "gradient":
            return self.settings["restarts"]
        q, k = self.settings["samples"], self.k
        return min(q, max(k, 16), self.settings["chunk_size"])

    def _noise(self, idx: torch.Tensor, count: int) -> torch.Tensor:
        """(B, count, d) perturbations, drawn on the CPU from the seeded global generator."""
        b, d = len(idx), self.mu.shape[1]
        if self.settings["strategy"] == "reference":
            a = torch.full((b, count, d), float(self.settings["beta"]))
            return torch.distributions.Beta(a, a).sample().to(self.dev)
        eps = torch.randn(b, count, d).to(self.dev)
        return self.settings["radius"] * self.std[idx, None, :] * eps

    def _classify(self, z: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            logits = self.classifier(self.gen.decode(z))
        self.decodes += len(z)
        return logits.float()

    @torch.inference_mode()
    def _sampling(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        q, k = self.settings["samples"], self.k
        noise = self._noise(idx, q)
        order = noise.norm(dim=-1).argsort(dim=1)
        noise = noise.gather(1, order[..., None].expand_as(noise))
        kept = torch.zeros(len(idx), dtype=torch.long, device=self.dev)
        step = self._width()
        out: list[tuple[torch.Tensor, ...]] = []
        for lo in range(0, q, step):
            active = (kept < k).nonzero().flatten()
            if len(active) == 0:
                break
            delta = noise[active, lo : lo + step]
            z = (self.mu[idx[active], None, :] + delta).reshape(-1, delta.shape[-1])
            logits = self._classify(z)
            wrong = logits.argmax(1) != self.y[idx[active]].repeat_interleave(delta.shape[1])
            wrong = wrong.view(len(active), -1)
            keep = wrong & (wrong.long().cumsum(1) + kept[active, None] <= k)
            kept[active] += keep.sum(1)
            flat = keep.flatten().nonzero().flatten()
            rows = active.repeat_interleave(delta.shape[1])[flat]
            out.append(self._record(z[flat], idx[rows], logits[flat]))
        return tuple(torch.cat(parts) for parts in zip(*out)) if out else self._empty()

    def _gradient(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        r, k, d = self.settings["restarts"], self.k, self.mu.shape[1]
        step, bound = self.settings["step_size"], self.settings["max_distance"]
        center = self.mu[idx].repeat_interleave(r, 0)
        labels = self.y[idx].repeat_interleave(r)
        start = self._noise(idx, r).reshape(-1, d) * 0.25
        z = center + _clip_norm(start, bound)
        alive = torch.ones(len(z), dtype=torch.bool, device=self.dev)
        kept = torch.zeros(len(idx), dtype=torch.long, device=self.dev)
        owner = torch.arange(len(idx), device=self.dev).repeat_interleave(r)
        out: list[tuple[torch.Tensor, ...]] = []
        for _ in range(self.settings["steps"]):
            alive &= kept[owner] < k
            act = alive.nonzero().flatten()
            if len(act) == 0:
                break
            za = z[act].clone().requires_grad_(True)
            with torch.enable_grad(), self.autocast():
                logits = self.classifier(self.gen.decode(za)).float()
                loss = F.cross_entropy(logits, labels[act], reduction="sum")
            grad = torch.autograd.grad(loss, za)[0]
            self.decodes += len(za)
            logits, za = logits.detach(), za.detach()
            wrong = logits.argmax(1) != labels[act]
            # keep at most k per image: rank the newly wrong restarts of each image
            w_idx = act[wrong]
            rank = _rank_within(owner[w_idx])
            ok = rank + kept[owner[w_idx]] < k
            w_idx, w_rows = w_idx[ok], wrong.nonzero().flatten()[ok]
            kept.index_add_(0, owner[w_idx], torch.ones_like(w_idx))
            if len(w_idx):
                with torch.inference_mode():
                    out.append(self._record(za[w_rows], idx[owner[w_idx]], logits[w_rows]))
            alive[act[wrong]] = False
            moved = za + step * grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
            z[act] = center[act] + _clip_norm(moved - center[act], bound)
        return tuple(torch.cat(parts) for parts in zip(*out)) if out else self._empty()

    def _record(
        self, z: torch.Tensor, source: torch.Tensor, logits: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        probs = logits.softmax(1)
        conf, pred = probs.max(1)
        validity = validity_score(self.gen, z, self.settings["chunk_size"])
        return z.float(), source, pred, conf, validity

    def _empty(self) -> tuple[torch.Tensor, ...]:
        d = self.mu.shape[1]
        long = torch.zeros(0, dtype=torch.long, device=self.dev)
        flt = torch.zeros(0, device=self.dev)
        return torch.zeros(0, d, device=self.dev), long, long, flt, flt


def _clip_norm(delta: torch.Tensor, bound: float) -> torch.Tensor:
    norm = delta.norm(dim=1, keepdim=True)
    return delta * (bound / norm.clamp_min(bound))


def _rank_within(groups: torch.Tensor) -> torch.Tensor:
    """Each element's rank among the earlier elements with the same group id."""
    if len(groups) == 0:
        return groups
    order = torch.argsort(groups, stable=True)
    sorted_groups = groups[order]
    starts = torch.ones_like(sorted_groups, dtype=torch.bool)
    starts[1:] = sorted_groups[1:] != sorted_groups[:-1]
    pos = torch.arange(len(groups), device=groups.device)
    first = torch.cummax(torch.where(starts, pos, torch.zeros_like(pos)), 0).values
    rank = torch.empty_like(pos)
    rank[order] = pos - first
    return rank


@torch.inference_mode()
def validity_score(generator: Any, codes: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """How natural the decoded images of ``codes`` are, in (0, 1].

    The generator re-encodes its own output: ``v = exp(-||mu(decode(z)) - z||^2 / (2 d))``, a
    Gaussian kernel on the per-coordinate RMS distance. Images on the generator's data manifold
    map back close to their code (v near 1); off-manifold decodes from codes far outside the
    training distribution drift (v falls towards 0; it is floored at the smallest positive float32,
    about 1.2e-38, so it never reaches 0).
    """
    gen = as_generator(generator)
    if len(codes) == 0:
        return torch.zeros(0, device=codes.device)
    parts = []
    for z in codes.split(chunk_size):
        mu, _ = gen.encode(gen.decode(z))
        v = torch.exp(-(mu.float() - z.float()).pow(2).mean(1) / 2)
        parts.append(v.clamp_min(torch.finfo(torch.float32).tiny))
    return torch.cat(parts)


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
