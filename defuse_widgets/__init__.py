"""defuse-widgets: debug image classifiers beyond test accuracy, live in JupyterLab."""

from defuse_widgets import testing
from defuse_widgets._version import __version__ as __version__
from defuse_widgets.correction import validation  # dw.validation.carve, as the notebooks use it
from defuse_widgets.correction.evaluation import Evaluation, RegionAccuracy, RoundRecord
from defuse_widgets.correction.training import CancelToken
from defuse_widgets.data import ImageDataset, from_image_folder, from_tensors, load_dataset
from defuse_widgets.data.torch_dataset import from_torch_dataset
from defuse_widgets.distributed.backend import RayBackend
from defuse_widgets.imaging import ImageGrid, image_grid
from defuse_widgets.models.demo import (
    ConvVAE,
    SmallCNN,
    load_model,
    load_weights,
    save_model,
    save_weights,
    train_classifier,
    train_vae,
)
from defuse_widgets.models.generative import Generator, GeneratorAdapter, as_generator
from defuse_widgets.models.normalized import Normalized
from defuse_widgets.models.validity import validity_score
from defuse_widgets.regions.distill import Region, RegionSample, RegionSet, fit_regions
from defuse_widgets.regions.labels import (
    MODEL_IS_RIGHT,
    UNRECOGNIZABLE,
    Labeler,
    ReferenceModelLabeler,
    as_labeler,
)
from defuse_widgets.search.errors import ErrorSet
from defuse_widgets.search.identify import identify
from defuse_widgets.search.strategies import (
    GaussianSearch,
    GradientSearch,
    ReferenceSearch,
    SearchStrategy,
)
from defuse_widgets.session.session import VIEWS, DefuseSession
from defuse_widgets.suite.check import RegionResult, SuiteResult, check_suite
from defuse_widgets.utils import shutdown as _shutdown  # noqa: F401 (a prompt exit)
from defuse_widgets.utils.device import resolve_device
from defuse_widgets.utils.tables import Table, Tables
from defuse_widgets.widgets.explorer import Explorer
from defuse_widgets.widgets.interpolator import Interpolator

VIEWS.update(explorer=Explorer, interpolator=Interpolator)  # s.explorer(), s.interpolator()

__all__ = [
    "MODEL_IS_RIGHT",
    "Normalized",
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
    "ImageGrid",
    "Labeler",
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
    "Table",
    "Tables",
    "as_generator",
    "as_labeler",
    "check_suite",
    "fit_regions",
    "from_image_folder",
    "from_tensors",
    "from_torch_dataset",
    "identify",
    "image_grid",
    "load_dataset",
    "load_model",
    "load_weights",
    "resolve_device",
    "save_model",
    "save_weights",
    "testing",
    "validation",
    "train_classifier",
    "train_vae",
    "validity_score",
]
