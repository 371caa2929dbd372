"""defuse-widgets: debug image classifiers beyond test accuracy, live in JupyterLab."""

# Eager on purpose: the function ``identify`` shares its name with its module, and a lazy
# ``__getattr__`` would hand out the module once anything imported it.

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
