"""Benchmark identify(): our batched search against a per-image loop like the method's reference.

In one process, on the same trained models and the same test images, it times

1. ``baseline``: a per-image loop written from DESIGN.md's description of the reference search
   (for each image: encoder mean, Q Beta(a, a) noise vectors added to it, Q decodes, classify,
   keep at most k wrong codes with the smallest noise norm), one image at a time, with autograd
   enabled as in the reference (no inference mode), always in float32;
2. ``ours (reference)``: ``identify(..., ReferenceSearch(samples=Q, max_per_image=k, beta=a))``;
3. ``ours (gradient)``: ``identify(..., GradientSearch(max_per_image=k))``.

Each is run ``--repeats`` times; the table shows the median wall time. Decodes count every code
pushed through the decoder (a gradient step's forward and backward pass counts as one decode).
The last line printed is one JSON object with the figures.

Usage::

    .venv/bin/python benchmarks/identify.py                        # digits, all 450 test images
    .venv/bin/python benchmarks/identify.py --dataset fashion-mnist --images 500
    .venv/bin/python benchmarks/identify.py --device cuda --autocast bf16

Models are trained once (seeded) and cached under ``~/.cache/defuse-widgets/bench/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import defuse_widgets as dw
from defuse_widgets.search.rng import beta_noise, image_generator
from defuse_widgets.utils.cache import cache_root
from defuse_widgets.utils.device import resolve_device

CACHE = cache_root() / "bench"
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=["digits", "fashion-mnist"], default="digits")
    p.add_argument("--root", default=None, help=f"dataset folder (fashion: {FASHION_ROOT})")
    p.add_argument("--images", type=int, default=None, help="test images searched (default: all "
                   "450 for digits, 500 for fashion-mnist)")  # fmt: skip
    p.add_argument("--train-images", type=int, default=None, help="train the models on a subset")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (trainer default)")
    p.add_argument("--samples", type=int, default=100, help="Q, draws per image")
    p.add_argument("--k", type=int, default=5, help="errors kept per image at most")
    p.add_argument("--beta", type=float, default=50.0, help="Beta(a, a) noise parameter a")
    p.add_argument("--device", default="auto")
    p.add_argument("--autocast", choices=["none", "auto", "bf16", "fp16"], default="none",
                   help="mixed precision for ours (the baseline runs in float32; 'auto' is "
                   "identify's default)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p.parse_args(argv)


# ---------------------------------------------------------------- the per-image baseline


def baseline_search(
    classifier: nn.Module,
    vae: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    samples: int,
    k: int,
    beta: float,
    device: torch.device,
    seed: int,
) -> dict[str, Any]:
    """One image at a time: Q noisy codes around the encoder mean, keep the k smallest-norm errors.

    Plain forward passes with autograd enabled (the models are in eval mode), noise drawn on the
    CPU from the image's own generator keyed by (seed, i), as ours does, and moved to the device;
    results moved back to the CPU per image.
    """
    codes, sources, preds = [], [], []
    decodes = 0
    for i in range(len(images)):
        x = images[i : i + 1].to(device)
        mu, _ = vae.encode(x)
        noise = beta_noise(image_generator(seed, i), samples, mu.shape[1], beta).to(device)
        z = mu + noise
        logits = classifier(vae.decode(z))
        decodes += samples
        pred = logits.argmax(dim=1)
        wrong = torch.nonzero(pred != int(labels[i])).flatten()
        if len(wrong) == 0:
            continue
        nearest = wrong[torch.argsort(noise[wrong].norm(dim=1))[:k]]
        codes.append(z[nearest].detach().cpu())
        preds.append(pred[nearest].cpu())
        sources.append(torch.full((len(nearest),), i))
    found = len(codes) > 0
    return {
        "codes": torch.cat(codes) if found else torch.zeros(0, vae.latent_dim),
        "source_index": torch.cat(sources) if found else torch.zeros(0, dtype=torch.long),
        "pred_label": torch.cat(preds) if found else torch.zeros(0, dtype=torch.long),
        "decodes": decodes,
    }


# ---------------------------------------------------------------- models and data


def load_data(args: argparse.Namespace) -> dw.ImageDataset:
    if args.dataset == "digits":
        return dw.load_dataset("digits")
    return dw.load_dataset("fashion-mnist", root=args.root or FASHION_ROOT)


def load_models(data: dw.ImageDataset, args: argparse.Namespace) -> tuple[nn.Module, nn.Module]:
    """Train (seeded) or read the cached models for this dataset and training code."""
    package = Path(dw.__file__).parent
    digest = hashlib.sha256(f"{torch.__version__} {args.train_images} {args.epochs}".encode())
    digest.update((package / "models" / "demo.py").read_bytes())
    digest.update(data.x_train.numpy().tobytes() + data.y_train.numpy().tobytes())
    folder = CACHE / f"{args.dataset}-{digest.hexdigest()[:12]}"
    paths = {"classifier": folder / "classifier.safetensors", "vae": folder / "vae.safetensors"}
    if not all(p.is_file() for p in paths.values()):
        folder.mkdir(parents=True, exist_ok=True)
        train = data
        if args.train_images:
            n = args.train_images
            train = dw.from_tensors(data.x_train[:n], data.y_train[:n], data.x_test, data.y_test,
                                    data.classes, name=data.name)  # fmt: skip
        print(f"training models on {len(train.y_train)} {data.name} images (cached in {folder})",
              file=sys.stderr)  # fmt: skip
        t0, threads = time.perf_counter(), torch.get_num_threads()
        torch.set_num_threads(1)  # small models; on a shared 2-core machine 2 threads were slower
        try:
            clf = dw.train_classifier(train, epochs=args.epochs, seed=0, device="cpu")
            dw.save_model(clf, paths["classifier"])
            vae = dw.train_vae(train, epochs=args.epochs, seed=0, device="cpu")
            dw.save_model(vae, paths["vae"])
        finally:
            torch.set_num_threads(threads)
        print(f"trained in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return dw.load_model(paths["classifier"]), dw.load_model(paths["vae"])


# ---------------------------------------------------------------- timing


def timed(
    runs: dict[str, Callable[[], Any]], repeats: int, device: torch.device
) -> dict[str, tuple[float, list[float], Any]]:
    """Median wall time of each run; the runs take turns within each repeat, so a change in the
    machine's load (it may be shared) hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    results: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            results[name] = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(t), t, results[name]) for name, t in times.items()}


def describe_machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = str(device)
    if device.type == "cuda":
        dev += f" ({torch.cuda.get_device_name(device)})"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"machine: {platform.node()} {platform.system()} {platform.machine()}, {cpu}, "
        f"{os.cpu_count()} cores, load average {load:.1f}\n"
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads, device {dev}"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = load_data(args)
    clf, vae = load_models(data, args)
    clf, vae = clf.to(device).eval(), vae.to(device).eval()
    n = args.images or (len(data.y_test) if args.dataset == "digits" else 500)
    x, y = data.x_test[:n], data.y_test[:n]
    autocast = None if args.autocast == "none" else args.autocast
    q, k = args.samples, args.k

    print(describe_machine(device))
    print(
        f"data: {data.name}, {n} test images of shape {data.image_shape}, latent size "
        f"{vae.latent_dim}; Q={q} samples, k={k} per image, Beta({args.beta:g}, {args.beta:g}); "
        f"ours autocast={autocast}; {args.repeats} repeats (the three searches take turns), "
        f"median wall time"
    )

    reference = dw.ReferenceSearch(samples=q, max_per_image=k, beta=args.beta)
    gradient = dw.GradientSearch(max_per_image=k)

    def ours(strategy: dw.SearchStrategy, images: int = n) -> Callable[[], Any]:
        return lambda: dw.identify(clf, vae, x[:images], y[:images], strategy, device=device,
                                   autocast=autocast, seed=args.seed, progress=False)  # fmt: skip

    # warm-up (first calls allocate and pick kernels), not timed
    baseline_search(clf, vae, x[:4], y[:4], q, k, args.beta, device, args.seed)
    ours(reference, images=4)()
    timings = timed(
        {
            "baseline": lambda: baseline_search(clf, vae, x, y, q, k, args.beta, device, args.seed),
            "reference": ours(reference),
            "gradient": ours(gradient),
        },
        args.repeats,
        device,
    )
    base_s, base_all, base = timings["baseline"]
    ref_s, ref_all, ref = timings["reference"]
    grad_s, grad_all, grad = timings["gradient"]

    rows = [
        ("baseline (per image)", base_s, base_all, len(base["codes"]), base["decodes"],
         len(base["source_index"].unique())),
        ("ours, reference", ref_s, ref_all, len(ref), ref.decodes, len(ref.source_index.unique())),
        ("ours, gradient", grad_s, grad_all, len(grad), grad.decodes,
         len(grad.source_index.unique())),
    ]  # fmt: skip
    print()
    print(f"{'search':<22}{'median s':>10}{'errors':>8}{'images hit':>12}{'decodes':>10}"
          f"{'decodes/err':>13}{'ms/err':>9}   runs (s)")  # fmt: skip
    for name, secs, runs, errs, decodes, hit in rows:
        per_err = decodes / errs if errs else float("inf")
        ms_err = 1000 * secs / errs if errs else float("inf")
        print(f"{name:<22}{secs:>10.3f}{errs:>8}{hit:>12}{decodes:>10}{per_err:>13.1f}"
              f"{ms_err:>9.2f}   {', '.join(f'{t:.3f}' for t in runs)}")  # fmt: skip

    def per_error(decodes: int, errs: int) -> float | None:
        return round(decodes / errs, 2) if errs else None

    dpe_ref, dpe_grad = per_error(ref.decodes, len(ref)), per_error(grad.decodes, len(grad))
    # the baseline draws each image's Beta noise from the same per-image generator, so with the
    # same seed it should keep exactly the errors our reference strategy keeps
    same = len(base["codes"]) == len(ref) and bool(
        torch.equal(base["source_index"], ref.source_index)
        and torch.allclose(base["codes"], ref.codes, atol=1e-4)
    )
    result = {
        "dataset": data.name,
        "images": n,
        "samples": q,
        "k": k,
        "repeats": args.repeats,
        "autocast": autocast,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "baseline_s": round(base_s, 4),
        "ours_s": round(ref_s, 4),
        "gradient_s": round(grad_s, 4),
        "speedup": round(base_s / ref_s, 2),
        "errors_baseline": len(base["codes"]),
        "errors_ours": len(ref),
        "errors_gradient": len(grad),
        "decodes_baseline": base["decodes"],
        "decodes_ours": ref.decodes,
        "decodes_gradient": grad.decodes,
        "decodes_per_error_baseline": per_error(base["decodes"], len(base["codes"])),
        "decodes_per_error_reference": dpe_ref,
        "decodes_per_error_gradient": dpe_grad,
        "decodes_per_error_ratio": round(dpe_ref / dpe_grad, 2) if dpe_ref and dpe_grad else None,
        "same_errors_as_baseline": same,
    }
    print()
    print(f"baseline and ours (reference) keep the same errors: {same}")
    print(
        f"speedup (baseline / ours, same reference search): {result['speedup']}x; the gradient "
        f"strategy needs {result['decodes_per_error_ratio']}x fewer decodes per error"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
