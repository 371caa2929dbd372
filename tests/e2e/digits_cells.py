"""The notebook source the browser tests start from: a digits session, identified and distilled."""

from __future__ import annotations

from pathlib import Path


def session_source(paths: dict[str, Path], limit: int, max_regions: int) -> str:
    """Python that loads the cached digits models, makes ``s`` and runs identify and distill."""
    return (
        "import torch\n"
        "import defuse_widgets as dw\n"
        "torch.set_num_threads(2)\n"
        'data = dw.load_dataset("digits")\n'
        f"clf = dw.load_model({str(paths['classifier'])!r})\n"
        f"vae = dw.load_model({str(paths['vae'])!r})\n"
        's = dw.DefuseSession(classifier=clf, generator=vae, data=data, device="cpu", seed=0,\n'
        "                     progress=False)\n"
        f's.identify(split="test", limit={limit})\n'
        f"s.distill(max_regions={max_regions})\n"
    )
