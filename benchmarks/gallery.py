"""The docs' gallery: what failure regions look like on digits and on Fashion-MNIST.

For each dataset: the notebooks' models (trained, or loaded from ``$DEFUSE_WIDGETS_CACHE`` where
the notebooks cached them: digits as the quickstart, Fashion-MNIST as its notebook's defaults),
``identify`` on test images, ``distill``, then ``RegionSet.save_images`` for the largest regions
into ``docs/gallery/<dataset>/region-<id>.png``, and ``docs/gallery.md`` written around them with
each region's main mistake. Prints the figures it writes into the page.

Usage::

    nice -n 10 .venv/bin/python benchmarks/gallery.py [--regions 4] [--samples 16]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch

import defuse_widgets as dw
from defuse_widgets.cli import cache_dir, demo_models
from defuse_widgets.correction.validation import ValidationWarning

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
# notebooks/fashion_mnist.ipynb's defaults, so that the models its cache holds load here
FASHION = {"train": 10000, "test": 2000, "search": 200, "epochs": {"classifier": 5, "vae": 2}}
REFERENCE_EPOCHS = 15  # the notebook's reference model, part of its cache folder's name
SEED = 0
SCALE = {"digits": 4, "fashion-mnist": 2}  # PNG pixels per image pixel: 32 and 56 px images
TITLES = {"digits": "Digits (8x8)", "fashion-mnist": "Fashion-MNIST (28x28)"}

PAGE = """# Gallery: what failure regions look like

Each picture is one failure region: {samples} images decoded from the region's Gaussian (the
samples a labeler looks at, `RegionSet.save_images`), under the region's main mistake (the true
class of the errors' source images, and what the classifier calls them). The largest
{regions} regions of one run per dataset, with the notebooks' models (seed {seed}).

Regenerate the pictures and this page (the last run took {minutes} min on a shared 2-core CPU;
it trains the models where the notebooks have not cached them):

```bash
nice -n 10 .venv/bin/python benchmarks/gallery.py
```

{sections}
What to look for: a region whose samples read as its true class is a bug of the classifier
(label it with that class and fine-tune); one whose samples already look like the predicted
class says the model is right; one whose samples are no class at all is the generator's (label
it "unrecognizable"). The [generators](generators.md) page shows how to tell the generator's
limits apart, and the [troubleshooting](troubleshooting.md) page what the messages mean.
"""


def fashion_models(data: dw.ImageDataset) -> dict[str, torch.nn.Module]:
    """The Fashion-MNIST notebook's classifier and VAE (loaded from its cache when there)."""
    epochs = {**FASHION["epochs"], "reference": REFERENCE_EPOCHS}
    settings = "-".join(f"{k}{v}" for k, v in epochs.items())
    folder = cache_dir() / f"{data.name}-standard-vae16-{settings}"
    folder.mkdir(parents=True, exist_ok=True)
    fit_rows = dw.validation.carve(data, 0.1, SEED).fit_rows
    trainers = {
        "classifier": lambda: dw.train_classifier(
            data, epochs=epochs["classifier"], arch="standard", rows=fit_rows, seed=SEED
        ),
        "vae": lambda: dw.train_vae(data, epochs=epochs["vae"], width=16, seed=SEED),
    }
    models = {}
    for name, train in trainers.items():
        path = folder / f"{name}.safetensors"
        if path.is_file():
            models[name] = dw.load_model(path)
        else:
            models[name] = train()
            dw.save_model(models[name], path)
    return models


def gallery(
    key: str,
    data: dw.ImageDataset,
    models: dict[str, torch.nn.Module],
    limit: int | None,
    args: argparse.Namespace,
) -> str:
    """Search, distill and save the largest regions' images into ``docs/gallery/<key>/``; the
    page's section for them."""
    with warnings.catch_warnings():  # digits' split is too small to resolve 1 point: expected
        warnings.filterwarnings("ignore", "the validation split has", ValidationWarning)
        s = dw.DefuseSession(models["classifier"], models["vae"], data, seed=SEED)
    errors = s.identify(split="test", limit=limit, progress=False)
    regions = s.distill()
    largest = sorted(regions, key=lambda r: r.size, reverse=True)[: args.regions]
    folder = DOCS / "gallery" / key
    for old in folder.glob("region-*.png"):
        old.unlink()
    ids = [r.id for r in largest]
    paths = regions.save_images(folder, args.samples, 8, SCALE[key], regions=ids)
    names = data.classes
    lines = [
        f"## {TITLES[key]}",
        "",
        f"{errors.images_searched} test images searched, {len(errors)} errors, "
        f"{len(regions)} regions; test accuracy {s.evaluate().test_accuracy:.1%}.",
        "",
    ]
    for region, path in zip(largest, paths):
        true, pred = (names[c] if c >= 0 else "?" for c in region.transition)
        lines += [
            f"**Region {region.id}**: {true} read as {pred} ({region.size} errors, "
            f"{region.transition_share:.0%} of them this mistake)",
            "",
            f"![Region {region.id} of {TITLES[key]}: {true} read as {pred}]"
            f"({path.relative_to(DOCS).as_posix()})",
            "",
        ]
    print("\n".join(lines), flush=True)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--regions", type=int, default=4, help="regions per dataset (largest)")
    parser.add_argument("--samples", type=int, default=16, help="decoded samples per region")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    digits = dw.load_dataset("digits")
    sections = [gallery("digits", digits, demo_models(digits, SEED, progress=False), None, args)]
    fashion = dw.load_dataset(
        "fashion-mnist",
        root=FASHION_ROOT,
        train_limit=FASHION["train"],
        test_limit=FASHION["test"],
        seed=SEED,
    )
    sections.append(
        gallery("fashion-mnist", fashion, fashion_models(fashion), FASHION["search"], args)
    )
    minutes = max(1, round((time.perf_counter() - start) / 60))
    page = PAGE.format(
        samples=args.samples,
        regions=args.regions,
        seed=SEED,
        minutes=minutes,
        sections="\n".join(sections),
    )
    (DOCS / "gallery.md").write_text(page, encoding="utf-8")
    print(f"wrote docs/gallery.md and {DOCS / 'gallery'} in {minutes} min")


if __name__ == "__main__":
    main()
