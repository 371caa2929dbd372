"""What a search strategy searches with: :class:`SearchRun` holds the models, the images' codes
and the helpers every strategy shares (decoding and classifying in chunks, per-image randomness,
recording kept errors)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from defuse_widgets.models.generative import GeneratorAdapter
from defuse_widgets.models.validity import validity_score
from defuse_widgets.search.rng import per_image

Classifier = Callable[[torch.Tensor], torch.Tensor]
Found = tuple[torch.Tensor, ...]
"""The kept errors of a chunk: (codes, source_index, pred_label, confidence, validity)."""
FOUND_FIELDS = ("codes", "source_index", "pred_label", "confidence", "validity")
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_autocast(autocast: str | None, device: torch.device) -> str | None:
    """The mixed precision a search runs in: ``"auto"`` is ``"bf16"`` where ``device`` computes
    bf16 natively (a CPU with AVX512-BF16 or AMX, a CUDA GPU that supports it), else None;
    any other value is returned as it is."""
    if autocast != "auto":
        return autocast
    if device.type == "cpu":
        mkldnn = torch.backends.mkldnn.is_available()
        native = mkldnn and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    else:
        native = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return "bf16" if native else None


class ChunkSearch(Protocol):
    """What a run needs of a strategy (see
    :class:`~defuse_widgets.search.strategies.SearchStrategy`)."""

    @property
    def name(self) -> str: ...

    def width(self) -> int: ...

    def search_chunk(self, run: SearchRun, idx: torch.Tensor) -> Found: ...


class SearchRun:
    """What a strategy searches with: the models, the images' codes, and the shared helpers.

    Attributes
    ----------
    classifier, generator : the models, on ``device`` and in eval mode.
    y : (N,) int64 true labels; mu, std : (N, d) encoder means and standard deviations, on
        ``device``; index : (N,) int64 CPU, each row's index in the split (keys its randomness).
    chunk_size : most codes decoded in one call. decodes : codes decoded so far. seed : the seed.
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
        seed: int = 0,
        index: torch.Tensor | None = None,
    ):
        self.classifier, self.generator, self.device = classifier, generator, device
        self.y, self.mu, self.std = y.to(device), mu.to(device), std.to(device)
        self.chunk_size, self.autocast_name, self.seed = chunk_size, autocast, seed
        self.index = torch.arange(len(y)) if index is None else index.cpu().long()
        self.decodes = 0
        dtype = AUTOCAST.get(autocast or "")
        self.autocast: Callable[[], AbstractContextManager] = (
            (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext
        )

    @property
    def latent_dim(self) -> int:
        """Size d of the latent codes."""
        return int(self.mu.shape[1])

    def search_all(
        self,
        strategy: ChunkSearch,
        progress: bool,
        step: int | None = None,
        on_step: Callable[[dict[str, list[torch.Tensor]], int], Any] | None = None,
    ) -> dict[str, list[torch.Tensor]]:
        """Search every image with ``strategy``, in chunks of whole images; collect the columns.

        With ``on_step``, the images are searched ``step`` at a time in order, and after each step
        ``on_step(found, searched)`` gets the columns collected so far and how many images (the
        first ``searched``) they cover."""
        bar = tqdm(total=len(self.mu), desc=f"identify ({strategy.name})", disable=not progress)
        rows = torch.arange(len(self.mu))
        if on_step is None:
            found = self.search_rows(strategy, rows, bar)
        else:
            found = {key: [] for key in FOUND_FIELDS}
            for part in rows.split(step or len(rows)):
                for key, values in self.search_rows(strategy, part, bar).items():
                    found[key].extend(values)
                on_step(found, int(part[-1]) + 1)
        bar.close()
        return found

    def search_rows(
        self, strategy: ChunkSearch, rows: torch.Tensor, bar: Any = None
    ) -> dict[str, list[torch.Tensor]]:
        """Search the images ``rows`` (positions in ``mu``), chunk by chunk; collect the columns."""
        found: dict[str, list[torch.Tensor]] = {key: [] for key in FOUND_FIELDS}
        per_chunk = max(1, self.chunk_size // strategy.width())
        for idx in rows.to(self.device).split(per_chunk):
            for key, values in zip(found, strategy.search_chunk(self, idx)):
                found[key].append(values)
            if bar is not None:
                bar.update(len(idx))
                bar.set_postfix(errors=sum(len(c) for c in found["codes"]))
        return found

    def per_image(
        self, idx: torch.Tensor, draw: Callable[[torch.Generator], torch.Tensor]
    ) -> torch.Tensor:
        """Stack ``draw(generator)`` for the rows ``idx``, each from its image's own generator."""
        return per_image(self.seed, self.index[idx.cpu()].tolist(), draw).to(self.device)

    def classify(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Return float32 logits (M, K) of the decodes of codes ``z`` (M, d); count the decodes.

        With mixed precision and true ``labels`` (M,), the codes it calls wrong are decoded and
        classified again in float32 and get those logits (:meth:`confirm`)."""
        parts = []
        for piece in z.split(self.chunk_size):
            with self.autocast():
                parts.append(self.classifier(self.generator.decode(piece)).float())
        self.decodes += len(z)
        logits = torch.cat(parts)
        return logits if labels is None else self.confirm(z, labels, logits)

    def confirm(self, z: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Under mixed precision, replace the logits (M, K) of the codes ``z`` (M, d) they call
        wrong (against ``labels`` (M,)) by float32 ones, so every kept error is one in float32
        too; a few percent more work, not counted in ``decodes``. Without, ``logits`` as given."""
        if self.autocast is nullcontext:
            return logits
        wrong = (logits.argmax(1) != labels).nonzero().flatten()
        if len(wrong) == 0:
            return logits
        with torch.inference_mode():
            exact = [
                self.classifier(self.generator.decode(piece)).float()
                for piece in z[wrong].detach().split(self.chunk_size)
            ]
        logits = logits.clone()
        logits[wrong] = torch.cat(exact)
        return logits

    def loss_gradient(
        self, z: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return float32 logits (M, K) of codes ``z`` (M, d) and the gradient (M, d) of the
        summed cross-entropy against ``labels`` with respect to ``z``; count the decodes. Under
        mixed precision the codes it calls wrong get float32 logits (:meth:`confirm`)."""
        logits, grads = [], []
        for piece, target in zip(z.split(self.chunk_size), labels.split(self.chunk_size)):
            piece = piece.detach().clone().requires_grad_(True)
            with torch.enable_grad(), self.autocast():
                out = self.classifier(self.generator.decode(piece)).float()
                loss = F.cross_entropy(out, target, reduction="sum")
            grads.append(torch.autograd.grad(loss, piece)[0])
            logits.append(out.detach())
        self.decodes += len(z)
        return self.confirm(z, labels, torch.cat(logits)), torch.cat(grads)

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
