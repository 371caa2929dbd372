"""defuse-widgets: debug image classifiers beyond test accuracy, live in JupyterLab."""

from . import testing
from .correct import CancelToken
from .data import ImageDataset, from_tensors, load_dataset
from .device import resolve_device
from .distill import Region, RegionSample, RegionSet, fit_regions
from .distributed import RayBackend
from .errors import ErrorSet
from .evaluation import Evaluation, RegionAccuracy, RoundRecord
from .generative import Generator, GeneratorAdapter, as_generator
from .labels import MODEL_IS_RIGHT, UNRECOGNIZABLE, ReferenceModelLabeler
from .loaders import from_image_folder
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
from .search import identify
from .session import DefuseSession
from .strategies import GaussianSearch, GradientSearch, ReferenceSearch, SearchStrategy
from .suite_check import RegionResult, SuiteResult, check_suite
from .validity import validity_score

__version__ = "0.1.0"

__all__ = [
    "MODEL_IS_RIGHT",
    "UNRECOGNIZABLE",
    "CancelToken",
    "ConvVAE",
    "DefuseSession",
    "ErrorSet",
    "Evaluation",
    "GaussianSearch",
    "Generator",
    "GeneratorAdapter",
    "GradientSearch",
    "ImageDataset",
    "RayBackend",
    "ReferenceModelLabeler",
    "ReferenceSearch",
    "Region",
    "RegionSample",
    "RegionAccuracy",
    "RegionResult",
    "RegionSet",
    "RoundRecord",
    "SearchStrategy",
    "SmallCNN",
    "SuiteResult",
    "as_generator",
    "check_suite",
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
    "testing",
    "train_classifier",
    "train_vae",
    "validity_score",
]
