"""Classifiers from files for the ``defuse-widgets check`` command, never unpickled.

Two ways to name a model:

- ``MODULE:FACTORY`` (a function or class in an importable module that returns an ``nn.Module``,
  called without arguments) and optionally ``--weights`` (a ``.safetensors`` state dict);
- a self-describing file: TorchScript (``torch.jit.save``; any suffix but those below),
  ``torch.export`` (``.pt2``, ``torch.export.save``) or a demo model (``.safetensors`` written
  by :func:`~defuse_widgets.models.demo.save_model`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from defuse_widgets.models.demo import load_model
from defuse_widgets.utils.device import module_device


def load_classifier(
    model: str | None = None,
    weights: str | os.PathLike | None = None,
    model_file: str | os.PathLike | None = None,
) -> nn.Module:
    """The classifier named by ``model`` (+ ``weights``) or by ``model_file``, on the CPU.

    Parameters
    ----------
    model : "MODULE:FACTORY"; the current directory is importable.
    weights : a ``.safetensors`` state dict loaded into the factory's module (strict).
    model_file : a TorchScript, ``.pt2`` (torch.export) or demo ``.safetensors`` file.

    Raises
    ------
    ValueError
        When neither or both are given, or a file or factory does not give a model.
    """
    if (model is None) == (model_file is None):
        raise ValueError(
            "model: expected either --model MODULE:FACTORY (with --weights) or --model-file "
            "FILE, got " + ("both" if model is not None else "neither")
        )
    if model_file is not None:
        if weights is not None:
            raise ValueError(
                "weights: expected no --weights with --model-file (the file holds its weights)"
            )
        return from_file(Path(model_file))
    assert model is not None
    module = from_factory(model)
    if weights is not None:
        load_state(module, Path(weights), model)
    return module


def from_factory(spec: str) -> nn.Module:
    """Import ``MODULE:FACTORY`` and call the factory (or take the module it names)."""
    name, sep, attr = spec.partition(":")
    if not sep or not name or not attr:
        raise ValueError(f"model: expected MODULE:FACTORY (e.g. mypkg.models:make), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"model: cannot find {spec!r} ({exc})") from exc
    made = obj if isinstance(obj, nn.Module) else obj() if callable(obj) else obj
    if not isinstance(made, nn.Module):
        raise ValueError(
            f"model: expected {spec} to return a torch.nn.Module, got {type(made).__name__}"
        )
    return made.cpu()


def load_state(module: nn.Module, path: Path, spec: str) -> None:
    """Load a ``.safetensors`` state dict into ``module`` (strict)."""
    if not path.is_file():
        raise ValueError(f"weights: expected a .safetensors file, got {path} (no such file)")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"weights: expected a .safetensors file, got {path} ({exc})") from exc
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ValueError(f"weights: {path} does not fit the model of {spec} ({first})") from exc


def from_file(path: Path) -> nn.Module:
    """A TorchScript, torch.export (``.pt2``) or demo ``.safetensors`` model file."""
    if not path.is_file():
        raise ValueError(f"model_file: expected a model file, got {path} (no such file)")
    if path.suffix == ".safetensors":
        return load_model(path)
    if path.suffix == ".pt2":
        return _exported(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still read
            return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise ValueError(
            f"model_file: expected a TorchScript file (torch.jit.save), a torch.export .pt2 file "
            f"or a demo .safetensors model, got {path} ({str(exc).splitlines()[0]})"
        ) from exc


def _exported(path: Path) -> nn.Module:
    try:
        with weights_only_loads():
            program = torch.export.load(str(path))
    except Exception as exc:
        raise ValueError(
            f"model_file: expected a torch.export program (.pt2) whose tensors load without "
            f"unpickling code, got {path} ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from exc
    return ExportedModel(program.module())


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Inside the block every ``torch.load`` runs with ``weights_only=True`` (torch.export reads
    some payloads with ``torch.load``; this keeps them from unpickling code)."""
    original = torch.load

    def safe(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = safe
    try:
        yield
    finally:
        torch.load = original


class ExportedModel(nn.Module):
    """A ``torch.export`` program as a plain module: it refuses ``eval()``, so it is held
    outside the module tree (an exported program has no train/eval modes) and runs where it was
    loaded; inputs are moved there."""

    def __init__(self, program: nn.Module):
        super().__init__()
        self.__dict__["program"] = program

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        program = self.__dict__["program"]
        return program(x.to(module_device(program)))
