"""Shared fixtures for the unit tests.

Fixtures (all session-scoped, trained once per test run on the CPU)
--------------------------------------------------------------------
digits : the bundled 8x8 digits dataset, ``dw.load_dataset("digits")``.
digits_classifier : a :class:`~defuse_widgets.models.SmallCNN` trained on ``digits`` (seed 0),
    in eval mode.
digits_vae : a :class:`~defuse_widgets.models.ConvVAE` trained on ``digits`` (seed 0), in eval mode.
digits_model_paths : ``{"classifier": Path, "vae": Path}``, the two models saved with
    ``dw.save_model`` in a session temp dir.

The models are shared by every test: a test that changes weights (fine-tuning) must work on a copy,
``copy.deepcopy(digits_classifier)`` or ``dw.load_model(digits_model_paths["classifier"])``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import defuse_widgets as dw


@pytest.fixture(scope="session")
def digits() -> dw.ImageDataset:
    return dw.load_dataset("digits")


@pytest.fixture(scope="session")
def digits_model_paths(
    digits: dw.ImageDataset, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("digits-models")
    paths = {"classifier": folder / "classifier.safetensors", "vae": folder / "vae.safetensors"}
    classifier = dw.train_classifier(digits, seed=0, device="cpu", progress=False)
    dw.save_model(classifier, paths["classifier"])
    dw.save_model(dw.train_vae(digits, seed=0, device="cpu", progress=False), paths["vae"])
    return paths


@pytest.fixture(scope="session")
def digits_classifier(digits_model_paths: dict[str, Path]) -> torch.nn.Module:
    return dw.load_model(digits_model_paths["classifier"])


@pytest.fixture(scope="session")
def digits_vae(digits_model_paths: dict[str, Path]) -> torch.nn.Module:
    return dw.load_model(digits_model_paths["vae"])
