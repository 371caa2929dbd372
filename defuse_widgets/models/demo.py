"""Small demo models (a convolutional VAE and a CNN classifier), their seeded trainers, and I/O."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open, save_file
from torch import nn
from tqdm.auto import tqdm

from defuse_widgets.data.dataset import ImageDataset
from defuse_widgets.utils.checks import Constraints, Interval, Options, validate_params
from defuse_widgets.utils.device import resolve_device
from defuse_widgets.utils.seeding import seeded
from defuse_widgets.utils.tensorfiles import parse_safetensors

MIN_SIDE, MAX_SIDE = 8, 64
LIKELIHOODS = ("bernoulli", "gaussian")
CNN_ARCHS = ("small", "standard")

CONSTRAINTS: Constraints = {
    "latent_dim": [Interval(int, 1, None)],
    "width": [Interval(int, 1, None)],
    "num_classes": [Interval(int, 2, None)],
    "arch": [Options(CNN_ARCHS)],
    "epochs": [None, Interval(int, 1, None)],
    "batch_size": [Interval(int, 1, None)],
    "lr": [Interval(float, 0, None, closed="neither")],
    "beta": [Interval(float, 0, None)],
    "likelihood": [None, Options(LIKELIHOODS)],
}
"""The declared checks of the demo models and their trainers."""
TRAIN_VAE_CONSTRAINTS: Constraints = {
    **CONSTRAINTS,
    "latent_dim": [None, *CONSTRAINTS["latent_dim"]],
}
"""``train_vae``'s: its ``latent_dim`` may also be None (the default for the images' size)."""


def _check_image_shape(image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    if len(image_shape) != 3:
        raise ValueError(f"image_shape: expected (C, H, W), got {tuple(image_shape)}")
    c, h, w = (int(v) for v in image_shape)
    if c < 1 or not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise ValueError(
            f"image_shape: expected C >= 1 and H, W in [{MIN_SIDE}, {MAX_SIDE}], got {(c, h, w)}"
        )
    return c, h, w


def _downsampled_sizes(h: int, w: int, max_stages: int = 3) -> list[tuple[int, int]]:
    """Spatial sizes after each stride-2 stage, stopping before a side would drop below 4."""
    sizes = [(h, w)]
    while len(sizes) <= max_stages and min(sizes[-1]) // 2 >= 4:
        hh, ww = sizes[-1]
        sizes.append((math.ceil(hh / 2), math.ceil(ww / 2)))
    if len(sizes) == 1:
        sizes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return sizes


class ConvVAE(nn.Module):
    """A small convolutional VAE for images from 8x8 to 64x64 with any number of channels.

    ``encode(x)`` maps (N, C, H, W) in [0, 1] to ``(mu, logvar)``, each (N, latent_dim);
    ``decode(z)`` maps (N, latent_dim) to (N, C, H, W) in [0, 1].

    Examples
    --------
    >>> vae = ConvVAE((1, 8, 8), latent_dim=8)
    >>> vae.decode(torch.zeros(2, 8)).shape
    torch.Size([2, 1, 8, 8])
    """

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int = 8, width: int = 32):
        super().__init__()
        c, h, w = _check_image_shape(image_shape)
        validate_params(CONSTRAINTS, latent_dim=latent_dim, width=width)
        self.config = {"image_shape": [c, h, w], "latent_dim": int(latent_dim), "width": int(width)}
        self.image_shape = (c, h, w)
        self.latent_dim = int(latent_dim)
        sizes = _downsampled_sizes(h, w)
        channels = [width * 2**i for i in range(len(sizes))]
        enc: list[nn.Module] = [nn.Conv2d(c, channels[0], 3, padding=1), nn.LeakyReLU(0.1)]
        for cin, cout in zip(channels[:-1], channels[1:]):
            enc += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.LeakyReLU(0.1)]
        enc.append(nn.Flatten())
        self.encoder = nn.Sequential(*enc)
        flat = channels[-1] * sizes[-1][0] * sizes[-1][1]
        self.to_mu = nn.Linear(flat, latent_dim)
        self.to_logvar = nn.Linear(flat, latent_dim)
        dec: list[nn.Module] = [
            nn.Linear(latent_dim, flat),
            nn.LeakyReLU(0.1),
            nn.Unflatten(1, (channels[-1], *sizes[-1])),
        ]
        for i in range(len(sizes) - 1, 0, -1):
            dec += [
                nn.Upsample(size=sizes[i - 1], mode="nearest"),
                nn.Conv2d(channels[i], channels[i - 1], 3, padding=1),
                nn.LeakyReLU(0.1),
            ]
        dec += [nn.Conv2d(channels[0], c, 3, padding=1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.to_mu(h), self.to_logvar(h).clamp(-12.0, 6.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return self.decode(z), mu, logvar


class SmallCNN(nn.Module):
    """A small CNN classifier returning logits of shape (N, num_classes) for (N, C, H, W) input.

    ``arch="small"`` (the demo's): two convolutions at full resolution, one pooling, then a
    2x2 average; quick to train and deliberately modest (about 80% on Fashion-MNIST).
    ``arch="standard"``: the usual conv-pool-conv-pool-dense network (about 91% on Fashion-MNIST
    after 5 epochs), for benchmarks that need a properly trained model.

    Examples
    --------
    >>> SmallCNN((1, 8, 8), 10)(torch.zeros(3, 1, 8, 8)).shape
    torch.Size([3, 10])
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        width: int = 32,
        arch: str = "small",
    ):
        super().__init__()
        c, h, w = _check_image_shape(image_shape)
        validate_params(CONSTRAINTS, num_classes=num_classes, width=width, arch=arch)
        self.config = {
            "image_shape": [c, h, w],
            "num_classes": int(num_classes),
            "width": int(width),
            "arch": arch,
        }
        self.image_shape = (c, h, w)
        self.num_classes = int(num_classes)
        if arch == "small":
            self.features, flat = _small_features(c, width), 4 * 2 * width
        else:
            self.features, flat = _standard_features(c, width), 2 * width * (h // 4) * (w // 4)
        hidden = 4 * width
        self.head = nn.Sequential(
            nn.Linear(flat, hidden),
            nn.ReLU(),
            nn.Dropout(0.2 if arch == "small" else 0.4),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _small_features(c: int, width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
    )


def _standard_features(c: int, width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )


def _default_epochs(n: int, batch_size: int, target_steps: int) -> int:
    batches = max(1, math.ceil(n / batch_size))
    return int(min(100, max(2, round(target_steps / batches))))


def _batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=gen)
    yield from order.split(batch_size)


def vae_defaults(image_shape: tuple[int, int, int]) -> dict[str, Any]:
    """:func:`train_vae`'s defaults for images of ``image_shape`` (C, H, W): ``latent_dim`` and
    ``likelihood``. Small images (up to 16 pixels a side, e.g. digits) keep 8 and "bernoulli";
    larger ones get 32 and "gaussian", measured by ``benchmarks/generator.py`` on Fashion-MNIST
    (10,000 images, 5 epochs, width 16: Fréchet distance 109 -> 49 in the reference labeler's
    features, Shirt reconstructions recognised 0.5% -> 16%, Sandal 12% -> 66%, at the same cost;
    latent 32 alone or beta 0.1-0.25 did less). See ``docs/generators.md``."""
    if max(image_shape[1:]) <= 16:
        return {"latent_dim": 8, "likelihood": "bernoulli"}
    return {"latent_dim": 32, "likelihood": "gaussian"}


def _reconstruction_loss(recon: torch.Tensor, x: torch.Tensor, likelihood: str) -> torch.Tensor:
    """Summed negative log-likelihood of ``x`` under the decoder (up to a constant): binary
    cross-entropy, or a Gaussian whose one shared variance is the batch's mean squared error
    (its maximum-likelihood value: the calibrated "sigma-VAE" of Rybkin et al., 2021)."""
    if likelihood == "bernoulli":
        return F.binary_cross_entropy(recon, x, reduction="sum")
    sq = (recon - x).pow(2).sum()
    var = (sq / x.numel()).detach().clamp_min(1e-6)
    return 0.5 * sq / var + 0.5 * x.numel() * torch.log(var)


def train_vae(
    data: ImageDataset,
    latent_dim: int | None = None,
    epochs: int | None = None,
    batch_size: int = 128,
    lr: float = 2e-3,
    beta: float = 1.0,
    width: int = 32,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: bool = True,
    likelihood: str | None = None,
) -> ConvVAE:
    """Train a :class:`ConvVAE` on ``data.x_train`` (seeded) and return it in eval mode.

    ``latent_dim`` and ``likelihood`` default to :func:`vae_defaults` for the data's image size;
    ``epochs`` to about 3,000 optimizer steps (at most 100 epochs). Loss: the decoder's summed
    negative log-likelihood + ``beta`` x KL, where ``likelihood="bernoulli"`` is binary
    cross-entropy and ``"gaussian"`` a Gaussian whose one shared variance is set to its
    maximum-likelihood value, the batch's mean squared error (a calibrated decoder: as the error
    falls, reconstruction outweighs the KL more and images sharpen; cf. Dai and Wipf's
    learned-variance VAE). Decoding always gives the decoder's mean, in [0, 1].

    Examples
    --------
    >>> vae = train_vae(load_dataset("digits"), epochs=1, progress=False)  # doctest: +SKIP
    """
    # refused before any model is built (torch's own errors come mid-loop)
    validate_params(
        TRAIN_VAE_CONSTRAINTS,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        beta=beta,
        likelihood=likelihood,
        width=width,
        latent_dim=latent_dim,
    )
    dev = resolve_device(device)
    defaults = vae_defaults(data.image_shape)
    latent_dim = defaults["latent_dim"] if latent_dim is None else latent_dim
    likelihood = defaults["likelihood"] if likelihood is None else likelihood
    epochs = _default_epochs(len(data.x_train), batch_size, 3000) if epochs is None else epochs
    with seeded(seed) as gen:
        model = ConvVAE(data.image_shape, latent_dim, width).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        x_all = data.x_train.to(dev)
        bar = tqdm(range(epochs), desc="train VAE", disable=not progress)
        for _ in bar:
            model.train()
            total = 0.0
            for idx in _batches(len(x_all), batch_size, gen):
                x = x_all[idx.to(dev)]
                recon, mu, logvar = model(x)
                rec = _reconstruction_loss(recon, x, likelihood)
                kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
                loss = (rec + beta * kl) / len(x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(x)
            sched.step()
            bar.set_postfix(loss=f"{total / len(x_all):.2f}")
    return model.eval()


def train_classifier(
    data: ImageDataset,
    epochs: int | None = None,
    batch_size: int = 128,
    lr: float = 2e-3,
    width: int = 32,
    labels: torch.Tensor | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: bool = True,
    arch: str = "small",
    rows: torch.Tensor | None = None,
) -> SmallCNN:
    """Train a :class:`SmallCNN` (``arch``) on ``data`` (seeded) and return it in eval mode.

    ``labels`` (N_train,) replaces the training labels, e.g. to plant a bug; ``rows`` trains on
    those training rows only (e.g. ``session.validation.fit_rows``, keeping a validation split
    unseen). ``epochs`` defaults to about 2,000 optimizer steps (at most 100 epochs).
    """
    validate_params(
        CONSTRAINTS, epochs=epochs, batch_size=batch_size, lr=lr, width=width, arch=arch
    )
    y_train = data.y_train if labels is None else _check_labels(labels, data)
    x_train = data.x_train
    if rows is not None:
        x_train, y_train = x_train[rows], y_train[rows]
    dev = resolve_device(device)
    epochs = _default_epochs(len(x_train), batch_size, 2000) if epochs is None else epochs
    with seeded(seed) as gen:
        model = SmallCNN(data.image_shape, data.num_classes, width, arch).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        x_all, y_all = x_train.to(dev), y_train.to(dev)
        bar = tqdm(range(epochs), desc="train classifier", disable=not progress)
        for _ in bar:
            model.train()
            correct = 0
            for idx in _batches(len(x_all), batch_size, gen):
                idx = idx.to(dev)
                logits = model(x_all[idx])
                loss = F.cross_entropy(logits, y_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                correct += int((logits.argmax(1) == y_all[idx]).sum())
            sched.step()
            bar.set_postfix(train_acc=f"{correct / len(x_all):.3f}")
    return model.eval()


def _check_labels(labels: torch.Tensor, data: ImageDataset) -> torch.Tensor:
    y = torch.as_tensor(labels)
    if y.shape != data.y_train.shape or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(
            f"labels: expected integer class indices of shape {tuple(data.y_train.shape)}, "
            f"got {y.dtype} of shape {tuple(y.shape)}"
        )
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= data.num_classes):
        raise ValueError(
            f"labels: expected values in [0, {data.num_classes - 1}], "
            f"got min {int(y.min())} and max {int(y.max())}"
        )
    return y.long()


_MODEL_CLASSES: dict[str, type[nn.Module]] = {"ConvVAE": ConvVAE, "SmallCNN": SmallCNN}


def save_model(model: ConvVAE | SmallCNN, path: str | os.PathLike) -> None:
    """Write a demo model's weights and configuration to one ``.safetensors`` file."""
    name = type(model).__name__
    if name not in _MODEL_CLASSES:
        raise TypeError(f"model: expected a ConvVAE or SmallCNN, got {name}; use save_weights")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"class": name, "config": json.dumps(model.config)})


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a demo model written by :func:`save_model` (never unpickles)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no model file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta: dict[str, Any] = f.metadata() or {}
        cls = _MODEL_CLASSES[meta["class"]]
        config = json.loads(meta["config"])
    except Exception as exc:
        raise ValueError(f"{path} is not a defuse-widgets model file: {exc}") from exc
    config["image_shape"] = tuple(config["image_shape"])
    model = cls(**config)
    model.load_state_dict(load_file(str(path)))
    return model.to(resolve_device(device)).eval()


def save_weights(module: nn.Module, path: str | os.PathLike) -> None:
    """Write any module's state dict to a ``.safetensors`` file."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path))


def load_weights(module: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load weights written by :func:`save_weights` into ``module`` (strict) and return it.

    The file is checked before ``module`` changes: a pickle or a ``torch.save`` archive named
    ``.safetensors`` is refused for what it is (never unpickled), and so are weights whose names
    or shapes differ from the module's (so a refused file leaves ``module`` as it was)."""
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a .safetensors file path, got {path!r}")
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"path: no weights file {path}") from exc
    except OSError as exc:
        raise ValueError(f"path: cannot read {path} ({exc.strerror or exc})") from exc
    state, why = parse_safetensors(data)
    if state is None:
        raise ValueError(f"path: {path} {why}")
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state.items()}
    if ours != theirs:
        diff = sorted(set(ours.items()) ^ set(theirs.items()))[:3]
        raise ValueError(
            f"path: the weights in {path} do not fit the module (names or shapes differ: "
            f"{diff}); it was not changed"
        )
    module.load_state_dict(state, strict=True)
    return module
