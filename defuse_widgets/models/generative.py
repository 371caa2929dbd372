"""The Generator protocol (encode/decode) and adapters that wrap a user's models unchanged."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from defuse_widgets.models.inference import evaluating

EncodeOutput = tuple[torch.Tensor, torch.Tensor | None]


@runtime_checkable
class Generator(Protocol):
    """What Defuse needs of a generative model.

    ``encode(x)`` maps images (N, C, H, W) in [0, 1] to ``(mu, logvar)`` (each (N, d); ``logvar``
    may be None for a deterministic encoder); ``decode(z)`` maps codes (N, d) to images.
    """

    latent_dim: int

    def encode(self, x: torch.Tensor) -> EncodeOutput: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


class GeneratorAdapter:
    """Wraps a user's encoder and decoder callables as a :class:`Generator`.

    Accepts encoders that return ``(mu, logvar)``, ``[mu, logvar]`` or just ``mu``. The wrapped
    modules are used as they are (only moved to the session's device and put in eval mode while
    searching).

    Examples
    --------
    >>> gen = as_generator(encode=lambda x: x.flatten(1)[:, :4],
    ...                    decode=lambda z: z.view(-1, 1, 2, 2))
    """

    def __init__(
        self,
        encode: Callable[[torch.Tensor], Any],
        decode: Callable[[torch.Tensor], torch.Tensor],
        latent_dim: int | None = None,
        modules: tuple[nn.Module, ...] = (),
        spatial: bool = False,
    ):
        self._encode = encode
        self.spatial = bool(spatial)
        self._decode = decode
        self._latent_dim = latent_dim
        self.modules = tuple(m for m in modules if isinstance(m, nn.Module))
        self.latent_shape: tuple[int, ...] | None = None
        """With ``spatial``: the shape of one code as the decoder takes it, (C, h, w), set by the
        first encoding; None before it and for flat (d,) codes."""

    @property
    def latent_dim(self) -> int:
        if self._latent_dim is None:
            raise ValueError(
                "latent_dim is not known yet: pass latent_dim= to as_generator or encode an "
                "image first"
            )
        return self._latent_dim

    def encode(self, x: torch.Tensor) -> EncodeOutput:
        mu, logvar = _split_encoding(self._encode(x))
        if len(mu) != len(x) or (mu.ndim != 2 and not (self.spatial and mu.ndim > 2)):
            spatial = "" if self.spatial else " (spatial codes (N, C, h, w): pass spatial=True)"
            raise ValueError(
                f"generator.encode: expected codes of shape ({len(x)}, d){spatial}, got "
                f"{tuple(mu.shape)}"
            )
        if logvar is not None and logvar.shape != mu.shape:
            raise ValueError(
                f"generator.encode: logvar shape {tuple(logvar.shape)} differs from mu "
                f"{tuple(mu.shape)}"
            )
        if mu.ndim > 2:  # spatial latents: flat (N, C*h*w) codes for the search and the mixture
            shape = tuple(int(v) for v in mu.shape[1:])
            if self.latent_shape is not None and shape != self.latent_shape:
                raise ValueError(
                    f"generator.encode: expected spatial codes of shape {self.latent_shape}, got "
                    f"{shape} (images of another size?)"
                )
            self.latent_shape = shape
            mu, logvar = mu.flatten(1), None if logvar is None else logvar.flatten(1)
        if self._latent_dim is None:
            self._latent_dim = int(mu.shape[1])
        elif mu.shape[1] != self._latent_dim:
            raise ValueError(
                f"generator.encode: expected {self._latent_dim}-d codes, got {int(mu.shape[1])}-d"
            )
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.latent_shape is not None and z.ndim == 2:
            z = z.reshape(len(z), *self.latent_shape)
        return self._decode(z)

    def to(self, device: torch.device) -> GeneratorAdapter:
        for m in self.modules:
            m.to(device)
        return self

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        with evaluating(*self.modules):
            yield


def _split_encoding(out: Any) -> EncodeOutput:
    if isinstance(out, torch.Tensor):
        return out, None
    if isinstance(out, (tuple, list)) and len(out) >= 1 and isinstance(out[0], torch.Tensor):
        logvar = out[1] if len(out) > 1 and isinstance(out[1], torch.Tensor) else None
        return out[0], logvar
    raise TypeError(
        "generator.encode: expected the encoder to return mu or (mu, logvar) tensors, "
        f"got {type(out).__name__}"
    )


NEEDS = (
    "Defuse needs encode(images) for images (N, C, H, W) in [0, 1] returning codes (N, d) "
    "(or (N, C, h, w) with spatial=True), or (mu, logvar) of that shape, and decode(codes) "
    "returning images "
    "(N, C, H, W) in [0, 1]; wrap a model that works in another range, e.g. "
    "as_generator(encode=lambda x: vae.encode(2 * x - 1), "
    "decode=lambda z: (vae.decode(z) + 1) / 2, modules=[vae])"
)


def is_diffusers_vae(model: Any) -> bool:
    """True for a diffusers ``AutoencoderKL``-like model: a module whose ``config`` names its
    ``latent_channels`` and that has ``encode``/``decode`` methods."""
    config = getattr(model, "config", None)
    return (
        isinstance(model, nn.Module)
        and hasattr(config, "latent_channels")
        and callable(getattr(model, "encode", None))
        and callable(getattr(model, "decode", None))
    )


def _diffusers_functions(
    vae: nn.Module,
) -> tuple[Callable[[torch.Tensor], EncodeOutput], Callable[[torch.Tensor], torch.Tensor]]:
    """encode/decode for a diffusers ``AutoencoderKL``: pixels [0, 1] <-> its [-1, 1], its output
    objects (``.latent_dist`` with ``mean``/``logvar``, ``.sample``) <-> tensors. Codes are the
    raw latent means (not multiplied by ``config.scaling_factor``), (N, C, h, w)."""

    def encode(x: torch.Tensor) -> EncodeOutput:
        out = vae.encode(x * 2 - 1)  # type: ignore[operator]
        dist = getattr(out, "latent_dist", out)
        if not isinstance(getattr(dist, "mean", None), torch.Tensor):
            raise TypeError(
                "generator.encode: expected the diffusers VAE to return an output with "
                f"latent_dist.mean, got {type(out).__name__}"
            )
        logvar = getattr(dist, "logvar", None)
        return dist.mean, logvar if isinstance(logvar, torch.Tensor) else None

    def decode(z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 4:
            raise ValueError(
                f"generator.decode: the diffusers VAE decodes codes (N, C, h, w), got "
                f"{tuple(z.shape)}; encode an image first so the adapter knows (C, h, w)"
            )
        out = vae.decode(z)  # type: ignore[operator]
        images = getattr(out, "sample", out)
        return ((images + 1) / 2).clamp(0, 1)

    return encode, decode


def as_generator(
    model: Any = None,
    *,
    encode: Callable[[torch.Tensor], Any] | None = None,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    latent_dim: int | None = None,
    modules: Sequence[nn.Module] = (),
    spatial: bool = False,
) -> GeneratorAdapter:
    """Wrap a VAE as a :class:`Generator` without changing it.

    Parameters
    ----------
    model : a module with ``encode``/``decode`` methods, or with ``encoder``/``decoder`` submodules
        (the encoder returning ``mu``, ``(mu, logvar)`` or ``[mu, logvar]``), or a diffusers
        ``AutoencoderKL`` (its images in [-1, 1], output objects and spatial latents handled
        here, see ``spatial``). An existing adapter is returned as is.
    encode, decode : two callables, instead of ``model``.
    latent_dim : the code size; read from ``model.latent_dim`` when present, else from the first
        encoding.
    modules : with plain functions for ``encode``/``decode``, the modules they use, so a session
        can move them to its device and put them in eval mode while searching.
    spatial : the encoder returns spatial codes (N, C, h, w) and the decoder takes them back:
        they are flattened to (N, C*h*w) for the search and the mixture and reshaped for
        decoding. Set for a diffusers ``AutoencoderKL``; elsewhere codes must be (N, d).

    Examples
    --------
    >>> gen = as_generator(train_vae(load_dataset("digits")))  # doctest: +SKIP
    """
    if isinstance(model, GeneratorAdapter):
        return model
    spatial = spatial or is_diffusers_vae(model)
    if model is not None and (encode is not None or decode is not None):
        raise TypeError("as_generator: pass either model or encode= and decode=, not both")
    modules = tuple(modules)
    if model is not None:
        latent_dim = latent_dim or getattr(model, "latent_dim", None)
        if is_diffusers_vae(model):
            (encode, decode), modules = _diffusers_functions(model), (model,)
        elif callable(getattr(model, "encode", None)) and callable(getattr(model, "decode", None)):
            encode, decode, modules = model.encode, model.decode, (model,)
        elif callable(getattr(model, "encoder", None)) and callable(
            getattr(model, "decoder", None)
        ):
            encode, decode, modules = model.encoder, model.decoder, (model,)
        else:
            raise TypeError(
                "generator: expected a module with encode()/decode() methods (a diffusers "
                "AutoencoderKL works as it is) or encoder/decoder submodules, or encode= and "
                f"decode= callables; got {type(model).__name__}. {NEEDS}"
            )
    if encode is None or decode is None:
        raise TypeError("as_generator: both encode and decode are needed")
    if not modules:
        owners: list[Any] = [getattr(f, "__self__", f) for f in (encode, decode)]
        modules = tuple(m for m in owners if isinstance(m, nn.Module))
    return GeneratorAdapter(encode, decode, latent_dim, modules, spatial)


def as_classifier(model: Any) -> nn.Module:
    """Check that ``model`` is a torch module (Defuse fine-tunes it) and return it."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            "classifier: expected a torch.nn.Module returning logits (N, K), "
            f"got {type(model).__name__}"
        )
    return model


def check_materialized(name: str, modules: Sequence[nn.Module]) -> None:
    """Refuse modules whose weights are on the meta device (shapes only, nothing to compute)."""
    for module in modules:
        tensors = [*module.parameters(), *module.buffers()]
        if any(t.is_meta for t in tensors):
            raise ValueError(
                f"{name}: expected a model with real weights, got one on the meta device "
                "(its weights were never loaded); materialize it first, e.g. "
                "model.to_empty(device='cpu') then model.load_state_dict(weights)"
            )


def check_logits(out: torch.Tensor, n: int, num_classes: int) -> None:
    """Raise a clear error if a classifier output is not (n, num_classes) logits.

    Outputs that are all in [0, 1] with rows summing to 1 are probabilities, which would make the
    cross-entropy used for search and fine-tuning wrong.
    """
    if out.ndim != 2 or out.shape[0] != n:
        raise ValueError(f"classifier: expected logits of shape ({n}, K), got {tuple(out.shape)}")
    if out.shape[1] < num_classes:
        raise ValueError(
            f"classifier: returns {out.shape[1]} classes but the labels need {num_classes}"
        )
    if not torch.isfinite(out).all():
        raise ValueError(
            "classifier: returned NaN or infinite logits on the data's first test images; check "
            "its weights (a diverged training run?) and that it expects pixels in [0, 1]"
        )
    sums = out.float().sum(1)
    if out.min() >= 0 and out.max() <= 1 and torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
        raise ValueError(
            "classifier: returns probabilities (non-negative rows summing to 1), but Defuse needs "
            "logits; remove the final softmax (or wrap the model to return log-probabilities)"
        )


def check_models(
    generator: GeneratorAdapter, classifier: nn.Module, images: torch.Tensor, num_classes: int
) -> None:
    """Check on a few ``images`` (n, C, H, W) that the models fit the data and each other.

    The generator must decode its encoder's codes to images of the data's shape, and the
    classifier must return (n, ``num_classes``) logits; ValueError saying what does not fit.
    """
    shape = "x".join(str(s) for s in images.shape[1:])
    with torch.inference_mode():
        mu, _ = _call("generator", "encoding", generator.encode, images, shape)
        if not torch.isfinite(mu).all():
            raise ValueError(
                "generator: its encoder returned NaN or infinite codes for the data's first test "
                "images; check its weights and that it expects pixels in [0, 1]"
            )
        try:
            decoded = generator.decode(mu)
        except RuntimeError as exc:
            raise ValueError(
                f"generator: decoding the encoder's {tuple(mu.shape)} codes failed ({exc}); "
                "does encode return (mu, logvar) and is latent_dim right?"
            ) from exc
        if decoded.shape[1:] != images.shape[1:]:
            raise ValueError(
                f"generator: decodes to images of shape {tuple(decoded.shape[1:])}, but the "
                f"data's images are {tuple(images.shape[1:])}"
            )
        logits = _call("classifier", "classifying", classifier, images, shape)
        check_logits(logits, len(images), num_classes)
    if logits.shape[1] != num_classes:
        raise ValueError(
            f"classifier: expected {num_classes} logits per image, one per class of the data, "
            f"got {logits.shape[1]}; build it with num_classes={num_classes}, or give the data "
            f"{logits.shape[1]} class names if the model is right"
        )


def _call(
    name: str, doing: str, fn: Callable[[torch.Tensor], Any], images: torch.Tensor, shape: str
) -> Any:
    try:
        return fn(images)
    except RuntimeError as exc:
        raise ValueError(
            f"{name}: expected a model for the data's {shape} (C x H x W) images, but {doing} "
            f"them failed ({exc}); was it built for images of another size or channel count?"
        ) from exc
