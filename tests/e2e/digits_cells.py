"""The notebook source the browser tests start from: a digits session, identified and distilled."""

from __future__ import annotations

from pathlib import Path


def models_source(paths: dict[str, Path]) -> str:
    """Python that loads the cached digits models and makes the session ``s``."""
    return (
        "import torch\n"
        "import defuse_widgets as dw\n"
        "torch.set_num_threads(2)\n"
        'data = dw.load_dataset("digits")\n'
        f"clf = dw.load_model({str(paths['classifier'])!r})\n"
        f"vae = dw.load_model({str(paths['vae'])!r})\n"
        's = dw.DefuseSession(classifier=clf, generator=vae, data=data, device="cpu", seed=0,\n'
        "                     progress=False)\n"
    )


def session_source(paths: dict[str, Path], limit: int, max_regions: int) -> str:
    """:func:`models_source`, then identify and distill."""
    return (
        models_source(paths)
        + f's.identify(split="test", limit={limit})\n'
        + f"s.distill(max_regions={max_regions})\n"
    )
