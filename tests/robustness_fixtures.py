"""Helpers of the robustness tests of saving and loading (not a conftest).

- :func:`make_sessions`: a session saved with 1 round ("old"), then taken further ("new").
- :func:`signature`: what tells two saved sessions apart.
- :func:`outcome`: load a directory and say whether it is the old or the new session.
- :func:`data_file`: the data file a saved directory's manifest names.
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from session_fixtures import label_true_class, ready_session
from torch import nn

import defuse_widgets as dw

TINY = {"steps": 2, "batch_size": 16}
Sessions = tuple[dw.DefuseSession, Path, tuple[Any, ...], tuple[Any, ...]]


def signature(s: dw.DefuseSession) -> tuple[Any, ...]:
    """What tells two saved sessions apart: labels, rounds, history and every snapshot's bits."""
    digest = hashlib.sha256()
    for snap in s._snapshots:
        for key in sorted(snap):
            digest.update(key.encode() + snap[key].numpy().tobytes())
    return (
        s.seed,
        sorted(s.labels.items()),
        s.active_round,
        s.rounds,
        len(s.history),
        digest.hexdigest(),
    )


def load(path: Path, classifier: nn.Module, vae: nn.Module) -> dw.DefuseSession:
    return dw.DefuseSession.load(path, classifier=copy.deepcopy(classifier), generator=vae)


def make_sessions(
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
    digits: dw.ImageDataset,
    tmp_path_factory: pytest.TempPathFactory,
) -> Sessions:
    """A session saved with 1 round ("old"), then taken to 7 rounds and new labels ("new")."""
    s = ready_session(digits_classifier, digits_vae, digits)
    label_true_class(s, 0)
    s.correct(**TINY)
    pristine = s.save(tmp_path_factory.mktemp("old") / "session")
    old = signature(s)
    for _ in range(6):
        s.correct(**TINY)
    s.label(1, dw.MODEL_IS_RIGHT)
    s.revert(3)
    return s, pristine, old, signature(s)


def outcome(path: Path, old: tuple, new: tuple, clf: nn.Module, vae: nn.Module) -> tuple[str, bool]:
    """("old" | "new" | what went wrong, whether the load warned about left-overs)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            got = signature(load(path, clf, vae))
        except ValueError as exc:
            return f"unloadable: {exc}", False
    warned = any("interrupted save" in str(w.message) for w in caught)
    return ("old" if got == old else "new" if got == new else f"mixed: {got}"), warned


def data_file(path: Path, key: str) -> Path:
    """The data file ``key`` of a saved directory (by its manifest, or a version 1 name)."""
    files = json.loads((path / "session.json").read_text()).get("files")
    return path / (files[key]["name"] if files else f"{key}.safetensors")
