"""defuse-widgets: debug image classifiers beyond test accuracy, live in JupyterLab.

The public API is imported lazily, so ``import defuse_widgets`` (and its Jupyter server
extension, :mod:`defuse_widgets.jupyter_nodelay`) does not import torch until it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CancelToken": "correct",
    "ImageDataset": "data",
    "from_image_folder": "data",
    "from_tensors": "data",
    "load_dataset": "data",
    "resolve_device": "device",
    "Region": "distill",
    "RegionSample": "distill",
    "RegionSet": "distill",
    "fit_regions": "distill",
    "Generator": "generative",
    "GeneratorAdapter": "generative",
    "as_generator": "generative",
    "ErrorSet": "identify",
    "identify": "identify",
    "validity_score": "identify",
    "MODEL_IS_RIGHT": "labels",
    "UNRECOGNIZABLE": "labels",
    "ReferenceModelLabeler": "labels",
    "ConvVAE": "models",
    "SmallCNN": "models",
    "load_model": "models",
    "load_weights": "models",
    "save_model": "models",
    "save_weights": "models",
    "train_classifier": "models",
    "train_vae": "models",
    "DefuseSession": "session",
}

if TYPE_CHECKING:
    from .correct import CancelToken
    from .data import ImageDataset, from_image_folder, from_tensors, load_dataset
    from .device import resolve_device
    from .distill import Region, RegionSample, RegionSet, fit_regions
    from .generative import Generator, GeneratorAdapter, as_generator
    from .identify import ErrorSet, identify, validity_score
    from .labels import MODEL_IS_RIGHT, UNRECOGNIZABLE, ReferenceModelLabeler
    from .models import (
        ConvVAE,
        SmallCNN,
        load_model,
        load_weights,
        save_model,
        save_weights,
        train_classifier,
        train_vae,
    )
    from .session import DefuseSession


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'defuse_widgets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__version__ = "0.1.0"

__all__ = [
    "MODEL_IS_RIGHT",
    "UNRECOGNIZABLE",
    "CancelToken",
    "ConvVAE",
    "DefuseSession",
    "ErrorSet",
    "Generator",
    "GeneratorAdapter",
    "ImageDataset",
    "ReferenceModelLabeler",
    "Region",
    "RegionSample",
    "RegionSet",
    "SmallCNN",
    "as_generator",
    "fit_regions",
    "from_image_folder",
    "from_tensors",
    "identify",
    "load_dataset",
    "load_model",
    "load_weights",
    "resolve_device",
    "save_model",
    "save_weights",
    "train_classifier",
    "train_vae",
    "validity_score",
]
