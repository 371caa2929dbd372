"""Can the demo VAE draw every Fashion-MNIST class? Today's default against the new one.

Trains, in the same run and on the same seeded training subset, today's default VAE
(``TODAY``: latent 16, binary cross-entropy decoder) and the new default (``train_vae``'s
defaults: latent 32, a Gaussian decoder with calibrated variance), both at ``--width`` 16 (the
Fashion-MNIST notebook's), then measures each with
:func:`~defuse_widgets.models.generator_report.generator_report` on the first
``--test-images`` test images: per class, the share of real images and of their reconstructions
that the reference labeler calls their class, the ratio of the two (target: at least 0.9 for
every class), the Fréchet distance between both in the labeler's penultimate
features, and the reconstruction MSE. ``--variant NAME=JSON`` adds more ``train_vae`` settings
(how the defaults were chosen).

The reference labeler is the planted-bug suite's (``standard`` CNN, width 32, 5 epochs, seed 1,
all 60,000 training images, about 91% on the test split); it is trained once and cached under
``.cache/generator-bench/``. The last line printed is one JSON object.

Usage::

    nice -n 19 .venv/bin/python benchmarks/generator.py          # 10,000 images, 5 epochs, width 16
    nice -n 19 .venv/bin/python benchmarks/generator.py --diffusers  # + a small AutoencoderKL
    nice -n 19 .venv/bin/python benchmarks/generator.py --variant wide='{"width": 48}'
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

import defuse_widgets as dw
import defuse_widgets.models.inference
from defuse_widgets.models.demo import (
    _reconstruction_loss,
    load_model,
    load_weights,
    save_model,
    save_weights,
    train_classifier,
    train_vae,
    vae_defaults,
)
from defuse_widgets.models.generator_report import generator_report
from defuse_widgets.utils.jsonio import nan_to_none

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "generator-bench"
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
REFERENCE = {"arch": "standard", "width": 32, "epochs": 5, "seed": 1}
TODAY = {"latent_dim": 16, "likelihood": "bernoulli"}  # train_vae's defaults before issue 30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-images", type=int, default=10_000, help="seeded stratified subset")
    p.add_argument("--test-images", type=int, default=2000, help="test images measured")
    p.add_argument("--epochs", type=int, default=5, help="VAE epochs (every variant)")
    p.add_argument("--width", type=int, default=16,
                   help="VAE width (16: the Fashion notebook's; train_vae's: 32)")  # fmt: skip
    p.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                   help="more train_vae settings, e.g. big='{\"latent_dim\": 48}'")  # fmt: skip
    p.add_argument("--only", nargs="+", default=None, help="measure only these variants")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on "
                   "a shared 2-core machine)")  # fmt: skip
    p.add_argument("--diffusers", action="store_true",
                   help="also train a small diffusers AutoencoderKL (AUTOENCODER_KL)")  # fmt: skip
    p.add_argument("--diffusers-images", type=int, default=2000,
                   help="its training images (the first of the VAEs' subset)")  # fmt: skip
    p.add_argument("--diffusers-epochs", type=int, default=2, help="its epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the JSON line here")
    return p.parse_args(argv)


def cached(name: str, settings: dict[str, Any], build: Any) -> tuple[torch.nn.Module, float]:
    """A model trained once per settings, cached under ``CACHE``; (model, seconds it took).

    The key is the settings (a VAE's with ``train_vae``'s defaults filled in), not the code:
    delete ``CACHE`` after changing a trainer."""
    key = json.dumps({"torch": torch.__version__, **settings}, sort_keys=True)
    path = CACHE / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.safetensors"
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file():
        return load_model(path), float(json.loads(meta.read_text())["seconds"])
    start = time.perf_counter()
    model = build()
    seconds = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(f".{os.getpid()}.part")
    save_model(model, part)
    part.replace(path)
    meta.write_text(json.dumps({"settings": settings, "seconds": seconds}))
    return model, seconds


AUTOENCODER_KL = {"block_out_channels": [16, 32, 32], "latent_channels": 2, "layers_per_block": 1}


def autoencoder_kl(data: dw.ImageDataset, epochs: int, seed: int) -> tuple[torch.nn.Module, float]:
    """A small diffusers AutoencoderKL (``AUTOENCODER_KL``: 28x28 -> 2 x 7 x 7 codes) trained
    on ``data.x_train`` with train_vae's Gaussian loss (calibrated variance) + KL, Adam, seeded;
    cached as weights. Returns (model in eval mode, training seconds)."""
    from diffusers import AutoencoderKL

    def build() -> torch.nn.Module:
        torch.manual_seed(seed)
        c = data.image_shape[0]
        return AutoencoderKL(in_channels=c, out_channels=c, norm_num_groups=8,
                             down_block_types=("DownEncoderBlock2D",) * 3,
                             up_block_types=("UpDecoderBlock2D",) * 3,
                             sample_size=data.image_shape[1], **AUTOENCODER_KL)  # fmt: skip

    key = json.dumps({"torch": torch.__version__, "images": len(data.y_train), "epochs": epochs,
                      "seed": seed, **AUTOENCODER_KL}, sort_keys=True)  # fmt: skip
    path = CACHE / f"autoencoder-kl-{hashlib.sha256(key.encode()).hexdigest()[:12]}.safetensors"
    vae = build()
    if path.is_file():
        load_weights(vae, path)
        return vae.eval(), float(json.loads(path.with_suffix(".json").read_text())["seconds"])
    start = time.perf_counter()
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    vae.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(data.x_train), generator=gen).split(128):
            x = data.x_train[idx]
            dist = vae.encode(x * 2 - 1).latent_dist
            recon = (vae.decode(dist.sample(generator=gen)).sample + 1) / 2
            loss = (_reconstruction_loss(recon, x, "gaussian") + dist.kl().sum()) / len(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(vae, path)
    path.with_suffix(".json").write_text(json.dumps({"seconds": seconds}))
    return vae.eval(), seconds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    full = dw.load_dataset("fashion-mnist", root=FASHION_ROOT)
    data = dw.load_dataset("fashion-mnist", root=FASHION_ROOT, train_limit=args.train_images,
                           seed=args.seed)  # fmt: skip
    x, y = full.x_test[: args.test_images], full.y_test[: args.test_images]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, torch {torch.__version__}")  # fmt: skip
    print(f"VAE training images: {len(data.y_train)} (seeded stratified subset), epochs "
          f"{args.epochs}; measured on the first {len(y)} test images")  # fmt: skip
    reference, ref_seconds = cached(
        "reference", {"data": "fashion-mnist-60000", **REFERENCE},
        lambda: train_classifier(full, device="cpu", progress=False, **REFERENCE),
    )  # fmt: skip
    ref_acc = float((dw.models.inference.predict_labels(reference, x) == y).float().mean())
    print(f"reference labeler: {REFERENCE}, test accuracy {100 * ref_acc:.1f}% "
          f"(trained in {ref_seconds:.0f} s, cached)")  # fmt: skip
    variants: dict[str, dict[str, Any]] = {"today": dict(TODAY), "new": {}}
    for spec in args.variant:
        name, _, text = spec.partition("=")
        variants[name] = json.loads(text)
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only}
    common = {"epochs": args.epochs, "seed": args.seed,
              **({"width": args.width} if args.width else {})}  # fmt: skip
    results: dict[str, Any] = {}
    for name, settings in variants.items():
        kwargs = {**vae_defaults(data.image_shape), **common, **settings}
        vae, seconds = cached(
            "vae", {"images": len(data.y_train), **kwargs},
            lambda kw=kwargs: train_vae(data, device="cpu", progress=False, **kw),
        )  # fmt: skip
        report = generator_report(vae, reference, x, y, full.classes)
        results[name] = {"settings": kwargs, "config": vae.config, "train_seconds": seconds,
                         "report": report.to_dict()}  # fmt: skip
        print(f"\n== {name}: {kwargs} (trained in {seconds:.0f} s)")
        print(report.table())
    if args.diffusers:
        few = dw.ImageDataset(data.name, data.x_train[: args.diffusers_images],
                              data.y_train[: args.diffusers_images], data.x_test, data.y_test,
                              data.classes)  # fmt: skip
        vae, seconds = autoencoder_kl(few, args.diffusers_epochs, args.seed)
        report = generator_report(vae, reference, x, y, full.classes)
        results["diffusers"] = {"settings": {"epochs": args.diffusers_epochs,
                                             "images": len(few.y_train), **AUTOENCODER_KL},
                                "train_seconds": seconds, "report": report.to_dict()}  # fmt: skip
        print(f"\n== diffusers AutoencoderKL {AUTOENCODER_KL} (trained in {seconds:.0f} s)")
        print(report.table())
    names = list(results)
    print("\nper class, reconstructions recognised / real images recognised:")
    print(f"{'class':<12} {'real':>6} " + " ".join(f"{n[:9]:>9}" for n in names))
    for k, cls in enumerate(full.classes):
        real = results[names[0]]["report"]["classes"][k]["real"]
        cells = " ".join(f"{100 * results[n]['report']['classes'][k]['ratio']:>8.1f}%"
                         for n in names)  # fmt: skip
        print(f"{cls[:12]:<12} {100 * real:>5.1f}% {cells}")
    print(f"{'Fréchet':<12} {'':>6} " + " ".join(
        f"{results[n]['report']['frechet']:>9.2f}" for n in names))  # fmt: skip
    print(f"{'worst ratio':<12} {'':>6} " + " ".join(
        f"{100 * min(c['ratio'] for c in results[n]['report']['classes']):>8.1f}%"
        for n in names))  # fmt: skip
    print(f"{'train s':<12} {'':>6} " + " ".join(
        f"{results[n]['train_seconds']:>9.0f}" for n in names))  # fmt: skip
    out = {"train_images": len(data.y_train), "test_images": len(y), "epochs": args.epochs,
           "reference_accuracy": ref_acc, "variants": results}  # fmt: skip
    line = json.dumps(nan_to_none(out))
    if args.json is not None:
        args.json.write_text(line)
    print(line)
    return out


if __name__ == "__main__":
    main()
