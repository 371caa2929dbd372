"""Can the generator draw each class? Recognition of its reconstructions, a Fréchet distance in a
classifier's own features, and the reconstruction error, per class.

Everything Defuse finds and every sample a round trains on is decoded by the generator. When it
cannot draw a class, that class's regions look like another class to a labeler and to a person,
and neither finding nor fixing can work. The report says so before any search is run.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from defuse_widgets.models.generative import GeneratorAdapter, as_generator
from defuse_widgets.models.inference import evaluating
from defuse_widgets.utils.checks import in_range, positive_int
from defuse_widgets.utils.device import module_device

MIN_RATIO = 0.9
"""A class is flagged when its reconstructions are recognised at less than this share of the
rate of its real images (the issue's target for the demo VAE)."""


@dataclass
class ClassRecognition:
    """One class's figures in a :class:`GeneratorReport`.

    ``real`` is the share of the class's real images the judge calls the class, ``reconstructed``
    the share of their reconstructions it calls the class, ``ratio`` the second over the first
    (NaN without images), ``looks_like`` the class the judge most often gives the reconstructions
    it does not recognise (None when it recognises them all), ``mse`` the mean squared pixel
    error of the reconstructions (pixels in [0, 1]).
    """

    index: int
    name: str
    images: int
    real: float
    reconstructed: float
    ratio: float
    looks_like: str | None
    mse: float
    flagged: bool = False

    @property
    def message(self) -> str:
        """One plain sentence on what a flagged class means for Defuse ("" when not flagged)."""
        if not self.flagged:
            return ""
        looks = f"look like {self.looks_like}" if self.looks_like else "not look like it"
        return (
            f"regions of class {self.name} will {looks}: the generator's reconstructions of "
            f"{self.name} are recognised {100 * self.reconstructed:.0f}% of the time against "
            f"{100 * self.real:.0f}% for real images; fix the generator first"
        )


@dataclass
class GeneratorReport:
    """What :func:`generator_report` measured: per-class recognition, a Fréchet distance and the
    reconstruction error.

    Attributes
    ----------
    classes : one :class:`ClassRecognition` per class, in class order.
    frechet : Fréchet distance between the judge's penultimate features of the reconstructions
        and of the real images (FID-like, in the judge's own feature space; lower is better;
        comparable only between reports made with the same judge).
    mse : mean squared pixel error of the reconstructions over every image used.
    judge : "labeler" or "classifier" (then only the images it classifies right are used, so
        ``real`` is 1 for every class).
    images : the number of real images used.
    min_ratio : the flagging threshold on ``reconstructed / real``.
    """

    classes: list[ClassRecognition]
    frechet: float
    mse: float
    judge: str
    images: int
    min_ratio: float = MIN_RATIO
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def flagged(self) -> list[ClassRecognition]:
        """The classes whose reconstructions are recognised at less than ``min_ratio`` of their
        real images' rate, worst ratio first."""
        return sorted((c for c in self.classes if c.flagged), key=lambda c: c.ratio)

    @property
    def messages(self) -> list[str]:
        """One sentence per flagged class (empty when the generator draws every class)."""
        return [c.message for c in self.flagged]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures (NaN stays NaN; ``utils.jsonio.nan_to_none`` turns it to null)."""
        return {
            "judge": self.judge,
            "images": self.images,
            "frechet": self.frechet,
            "mse": self.mse,
            "min_ratio": self.min_ratio,
            "classes": [asdict(c) for c in self.classes],
            "flagged": [
                {
                    "index": c.index,
                    "name": c.name,
                    "looks_like": c.looks_like,
                    "ratio": c.ratio,
                    "message": c.message,
                }
                for c in self.flagged
            ],
            "settings": dict(self.settings),
        }

    def table(self) -> str:
        """The report as plain text: one line per class, then the flagged classes' sentences."""
        lines = [
            f"generator report ({self.judge} as judge, {self.images} images): "
            f"Fréchet distance {self.frechet:.2f}, reconstruction MSE {self.mse:.4f}",
            f"{'class':<14} {'images':>6} {'real':>6} {'recon':>6} {'ratio':>6} {'mse':>7}"
            "  looks like",
        ]
        for c in self.classes:
            lines.append(
                f"{c.name[:14]:<14} {c.images:>6} {_pct(c.real):>6} {_pct(c.reconstructed):>6} "
                f"{_pct(c.ratio):>6} {c.mse:>7.4f}  {c.looks_like or '-'}"
                + ("  FLAGGED" if c.flagged else "")
            )
        if self.flagged:
            lines += [f"- {m}" for m in self.messages]
        else:
            lines.append(
                f"every class's reconstructions are recognised at >= {self.min_ratio:.0%} of "
                "the rate of its real images"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr{_FLAGGED_STYLE if c.flagged else ''}>"
            f"<td>{html.escape(c.name)}</td><td>{c.images}</td><td>{_pct(c.real)}</td>"
            f"<td>{_pct(c.reconstructed)}</td><td>{_pct(c.ratio)}</td><td>{c.mse:.4f}</td>"
            f"<td>{html.escape(c.looks_like or '-')}</td></tr>"
            for c in self.classes
        )
        notes = "".join(f"<li>{html.escape(m)}</li>" for m in self.messages)
        verdict = (
            f"<ul>{notes}</ul>"
            if notes
            else f"<p>Every class's reconstructions are recognised at &ge; "
            f"{self.min_ratio:.0%} of the rate of its real images.</p>"
        )
        return (
            f"<div class='defuse-generator-report'><p><b>Generator report</b> "
            f"({html.escape(self.judge)} as judge, {self.images} images): Fréchet distance "
            f"{self.frechet:.2f}, reconstruction MSE {self.mse:.4f}</p>"
            "<table><thead><tr><th>class</th><th>images</th><th>real recognised</th>"
            "<th>reconstructions recognised</th><th>ratio</th><th>MSE</th><th>looks like</th>"
            f"</tr></thead><tbody>{rows}</tbody></table>{verdict}</div>"
        )


_FLAGGED_STYLE = ' style="background:#fde2e1"'


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f}%"


def penultimate_layer(model: nn.Module) -> nn.Module | None:
    """The model's last ``nn.Linear`` in module order (its input is the penultimate feature), or
    None when it has none (then :func:`judge_outputs` uses the logits as features)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def judge_outputs(
    model: nn.Module, images: torch.Tensor, batch_size: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes (n,) and penultimate features (n, f) of ``images`` (n, C, H, W).

    The features are the input of the model's last ``nn.Linear`` (the logits when it has none),
    flattened, float64 on the CPU.
    """
    layer = penultimate_layer(model)
    captured: list[torch.Tensor] = []
    handle = None
    if layer is not None:
        handle = layer.register_forward_hook(
            lambda _m, inputs, _out: captured.append(inputs[0].detach().flatten(1))
        )
    device = module_device(model)
    preds, feats = [], []
    try:
        with evaluating(model), torch.inference_mode():
            for x in images.split(batch_size):
                captured.clear()
                logits = model(x.to(device)).float()
                preds.append(logits.argmax(1).cpu())
                feats.append((captured[-1] if captured else logits).double().cpu())
    finally:
        if handle is not None:
            handle.remove()
    if not preds:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, 0, dtype=torch.float64)
    return torch.cat(preds), torch.cat(feats)


def reconstruct(
    generator: Any, images: torch.Tensor, batch_size: int = 512, device: Any = None
) -> torch.Tensor:
    """Decoded encoder means of ``images`` (n, C, H, W): (n, C, H, W) float32 on the CPU, pixels
    clamped to [0, 1]. ``device``: where the generator runs (default: its first module's)."""
    gen = as_generator(generator)
    if device is None:
        device = module_device(gen.modules[0]) if gen.modules else torch.device("cpu")
    out = []
    with gen.evaluating(), torch.inference_mode():
        for x in images.split(batch_size):
            mu, _ = gen.encode(x.to(device))
            out.append(gen.decode(mu).float().clamp(0, 1).cpu())
    return torch.cat(out) if out else images[:0].float()


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (n_a, f) and (n_b, f):
    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2)`` (as FID, but in
    any feature space). NaN with fewer than two rows in either set."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"a, b: expected feature matrices (n, f) of the same width, got {tuple(a.shape)} "
            f"and {tuple(b.shape)}"
        )
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    xa, xb = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = xa.mean(0), xb.mean(0)
    s_a = np.atleast_2d(np.cov(xa, rowvar=False))
    s_b = np.atleast_2d(np.cov(xb, rowvar=False))
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root_a @ s_b @ root_a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * cross)
    return max(value, 0.0)


def generator_report(
    generator: Any,
    judge: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[str],
    *,
    judge_is_classifier: bool = False,
    min_ratio: float = MIN_RATIO,
    batch_size: int = 512,
    device: Any = None,
) -> GeneratorReport:
    """Measure how well ``generator`` draws each class, as ``judge`` sees it.

    Parameters
    ----------
    generator : a VAE or adapter (see :func:`~defuse_widgets.models.generative.as_generator`).
    judge : a classifier returning logits (N, K): a labeler's reference model, or the classifier
        being debugged (then set ``judge_is_classifier``).
    images : (n, C, H, W) real images in [0, 1], e.g. a validation split.
    labels : (n,) their classes.
    classes : the class names (K).
    judge_is_classifier : use only the images the judge classifies right (the classifier's own
        mistakes say nothing about the generator), so every class's ``real`` rate is 1.
    min_ratio : flag a class when ``reconstructed / real`` is below this.
    batch_size : images per forward pass.
    device : where the generator runs (default: its own modules' device).

    Returns
    -------
    GeneratorReport
        per-class recognition of real images and of their reconstructions, the Fréchet distance
        between the judge's penultimate features of both, and the reconstruction MSE.
    """
    if images.ndim != 4 or labels.shape != (len(images),):
        raise ValueError(
            f"images, labels: expected (n, C, H, W) images and (n,) labels, got "
            f"{tuple(images.shape)} and {tuple(labels.shape)}"
        )
    if len(images) < 2:
        raise ValueError(f"images: expected at least 2 images, got {len(images)}")
    ratio = in_range("min_ratio", min_ratio, 0, 1)
    positive_int("batch_size", batch_size)
    if not isinstance(judge, nn.Module):
        raise TypeError(
            f"judge: expected a torch.nn.Module returning logits, got {type(judge).__name__}"
        )
    gen: GeneratorAdapter = as_generator(generator)
    labels = labels.long().cpu()
    real_pred, real_feat = judge_outputs(judge, images, batch_size)
    keep = real_pred == labels if judge_is_classifier else torch.ones_like(labels, dtype=torch.bool)
    images, labels = images[keep], labels[keep]
    real_pred, real_feat = real_pred[keep], real_feat[keep]
    if len(images) < 2:
        raise ValueError("judge: it classifies fewer than 2 of the images right; nothing to judge")
    recon = reconstruct(gen, images, batch_size, device)
    if recon.shape != images.shape:
        raise ValueError(
            f"generator: reconstructs images of shape {tuple(recon.shape[1:])}, but the images "
            f"are {tuple(images.shape[1:])}"
        )
    recon_pred, recon_feat = judge_outputs(judge, recon, batch_size)
    sq_err = (recon - images.float().cpu()).pow(2).flatten(1).mean(1)
    rows = []
    for k, name in enumerate(classes):
        mine = labels == k
        n = int(mine.sum())
        real = float((real_pred[mine] == k).float().mean()) if n else float("nan")
        rec = float((recon_pred[mine] == k).float().mean()) if n else float("nan")
        wrong = recon_pred[mine & (recon_pred != k)]
        looks = classes[int(torch.bincount(wrong).argmax())] if len(wrong) else None
        r = rec / real if n and real > 0 else float("nan")
        rows.append(
            ClassRecognition(
                k,
                str(name),
                n,
                real,
                rec,
                r,
                looks,
                float(sq_err[mine].mean()) if n else float("nan"),
                flagged=bool(r == r and r < ratio),
            )
        )
    return GeneratorReport(
        classes=rows,
        frechet=frechet_distance(recon_feat, real_feat),
        mse=float(sq_err.mean()),
        judge="classifier" if judge_is_classifier else "labeler",
        images=len(images),
        min_ratio=ratio,
        settings={"batch_size": batch_size},
    )


def recognition(
    judge: nn.Module, images: torch.Tensor, expected: int, batch_size: int = 512
) -> float:
    """The share of ``images`` (n, C, H, W) that ``judge`` calls class ``expected`` (NaN for
    none)."""
    if not len(images):
        return float("nan")
    pred, _ = judge_outputs(judge, images, batch_size)
    return float((pred == expected).float().mean())
