"""defuse-widgets: debug image classifiers beyond test accuracy, live in JupyterLab."""

from .data import ImageDataset, from_image_folder, from_tensors, load_dataset
from .device import resolve_device
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

__version__ = "0.1.0"
