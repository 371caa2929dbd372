"""Data: image datasets with train and test splits, from bundled, downloaded or your own files."""

from defuse_widgets.data.dataset import ImageDataset, from_tensors
from defuse_widgets.data.loaders import SUPPORTED, from_image_folder, load_dataset

__all__ = ["SUPPORTED", "ImageDataset", "from_image_folder", "from_tensors", "load_dataset"]
