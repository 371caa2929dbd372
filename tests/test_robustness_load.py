"""Loads of edited or forged session directories: refused with a clear error, before the
classifier passed in changes, and never by unpickling."""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from robustness_fixtures import Sessions, data_file, load
from session_fixtures import state_equal, weights
from torch import nn

import defuse_widgets as dw


def forge_data_file(path: Path, key: str, change: Callable[[dict[str, torch.Tensor]], Any]) -> None:
    """Change a data file's tensors and make its manifest entry match, as a forger would."""
    from safetensors.torch import load_file, save

    file = data_file(path, key)
    tensors = load_file(str(file))
    change(tensors)
    data = save(tensors)
    file.write_bytes(data)
    doc = json.loads((path / "session.json").read_text())
    if "files" in doc:
        doc["files"][key].update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
        (path / "session.json").write_text(json.dumps(doc))


def grow(name: str, dim: int) -> Callable[[dict[str, torch.Tensor]], None]:
    """A change that adds one entry along ``dim`` of tensor ``name``."""

    def change(t: dict[str, torch.Tensor]) -> None:
        extra = t[name].narrow(dim, 0, 1)
        t[name] = torch.cat([t[name], extra], dim)

    return change


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (grow("means", 1), r"means \(K, 8\)"),  # latent size 9 for a generator of 8
        (grow("means", 0), "means"),  # one more component than weights
        (grow("covariances", 0), "covariances"),
        (grow("covariances", 2), "covariances"),
        (grow("weights", 0), "weights"),
        (lambda t: t.update(assignments=t["assignments"] + 50), "assignments"),
        (lambda t: t.update(assignments=t["assignments"][:-1]), "assignments"),
    ],
)
def test_forged_regions_are_refused_before_the_classifier_changes(
    sessions: Sessions,
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
    tmp_path: Path,
    change: Callable[[dict[str, torch.Tensor]], None],
    match: str,
) -> None:
    _, pristine, _, _ = sessions
    path = Path(shutil.copytree(pristine, tmp_path / "forged"))
    forge_data_file(path, "regions", change)
    classifier = copy.deepcopy(digits_classifier).train()  # the saved session is at round 1
    before = weights(classifier)
    with pytest.raises(ValueError, match=match):
        dw.DefuseSession.load(path, classifier=classifier, generator=digits_vae)
    assert state_equal(weights(classifier), before), "a refused load changed the classifier"
    assert classifier.training, "a refused load switched the classifier to eval mode"


def test_a_region_naming_a_missing_component_is_refused(
    sessions: Sessions,
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
    tmp_path: Path,
) -> None:
    _, pristine, _, _ = sessions
    path = Path(shutil.copytree(pristine, tmp_path / "component"))
    doc = json.loads((path / "session.json").read_text())
    k = len(doc["regions"]["regions"])
    doc["regions"]["regions"][0]["component"] = 10 * k
    (path / "session.json").write_text(json.dumps(doc))
    classifier = copy.deepcopy(digits_classifier)
    before = weights(classifier)
    with pytest.raises(ValueError, match=f"component {10 * k}, but the mixture has"):
        dw.DefuseSession.load(path, classifier=classifier, generator=digits_vae)
    assert state_equal(weights(classifier), before)


def edited(doc: dict[str, Any], where: str, value: Any) -> None:
    """Set the field at a dotted path (``history.0.losses``) of a session.json document."""
    *parents, last = where.split(".")
    for part in parents:
        doc = doc[int(part)] if part.isdigit() else doc[part]
    doc[int(last) if last.isdigit() else last] = value


@pytest.mark.parametrize(
    ("where", "value", "field"),
    [
        ("history", "abc", "history"),
        ("seed", "abc", "seed"),
        ("seed", True, "seed"),
        ("labels", [[0, 1]], "labels"),
        ("labels", "0:1", "labels"),
        ("labels.0", "seven", "labels[0]"),
        ("active_round", "1", "active_round"),
        ("snapshots", 2.5, "snapshots"),
        ("dataset", "digits", "dataset"),
        ("history.0", "round one", "history[0]"),
        ("history.0.losses", "low", "history[0].losses"),
        ("history.0.evaluation.per_class", {"0": 1}, "history[0].evaluation.per_class"),
        ("errors.decodes", "many", "errors.decodes"),
        ("regions.regions.0.id", "a", "regions.regions[0].id"),
        ("regions.regions.0.transition", [1], "regions.regions[0].transition"),
        ("regions.regions", {"0": {}}, "regions.regions"),
    ],
)
def test_an_edited_session_json_gets_a_clear_error(
    sessions: Sessions,
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
    tmp_path: Path,
    where: str,
    value: Any,
    field: str,
) -> None:
    _, pristine, _, _ = sessions
    path = Path(shutil.copytree(pristine, tmp_path / "edited"))
    doc = json.loads((path / "session.json").read_text())
    if where == "labels.0":
        doc["labels"] = {"0": value}
    else:
        edited(doc, where, value)
    (path / "session.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError) as info:
        load(path, digits_classifier, digits_vae)
    message = str(info.value)
    assert f"field {field!r}" in message and "save the session again" in message, message
    for internal in ("dictionary update", "invalid literal", "object has no attribute"):
        assert internal not in message, message


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_a_pickle_named_safetensors_is_named_and_never_unpickled(
    sessions: Sessions,
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    _, pristine, _, _ = sessions
    path = Path(shutil.copytree(pristine, tmp_path / "pickled"))
    file = data_file(path, "weights")
    if kind == "pickle":
        file.write_bytes(pickle.dumps({"0.weight": [0.0] * 10}))
    else:
        torch.save({"0.weight": torch.zeros(3)}, file)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("load unpickled something")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    looks = "Python pickle" if kind == "pickle" else "zip archive, the format of torch.save"
    with pytest.raises(ValueError, match=f"{file.name} is not a safetensors file .*{looks}.*"):
        load(path, digits_classifier, digits_vae)
    with pytest.raises(ValueError, match="it was not unpickled or executed"):
        load(path, digits_classifier, digits_vae)


@pytest.mark.parametrize("bad", [None, 3, "", True])
def test_a_path_that_is_no_path_is_named_before_anything_happens(
    sessions: Sessions, digits_classifier: nn.Module, digits_vae: nn.Module, bad: Any
) -> None:
    s = sessions[0]
    before = (weights(s.classifier), s.active_round, s.labels)
    with pytest.raises(TypeError, match=f"path: expected a directory path .*got {bad!r}"):
        s.save(bad)
    with pytest.raises(TypeError, match=f"path: expected a directory path .*got {bad!r}"):
        dw.DefuseSession.load(bad, classifier=digits_classifier, generator=digits_vae)
    assert state_equal(before[0], weights(s.classifier)) and before[1:] == (
        s.active_round,
        s.labels,
    )


@pytest.mark.parametrize("kind", ["pickle", "torch.save", "truncated"])
def test_load_weights_names_a_file_that_is_not_safetensors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    module = nn.Linear(3, 2)
    before = weights(module)
    file = tmp_path / "w.safetensors"
    if kind == "pickle":
        file.write_bytes(pickle.dumps({"weight": [0.0] * 6}))
    elif kind == "torch.save":
        torch.save({"weight": torch.zeros(2, 3)}, file)
    else:
        dw.save_weights(nn.Linear(3, 2), file)
        file.write_bytes(file.read_bytes()[:-5])

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("load_weights unpickled something")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    looks = {
        "pickle": "is not a safetensors file .*Python pickle.*not unpickled",
        "torch.save": "is not a safetensors file .*zip archive",
        "truncated": "is not a safetensors file|is damaged",
    }[kind]
    with pytest.raises(ValueError, match=f"path: .*w.safetensors ({looks})"):
        dw.load_weights(module, file)
    assert state_equal(weights(module), before)
    with pytest.raises(TypeError, match="path: expected a .safetensors file path, got None"):
        dw.load_weights(module, None)  # type: ignore[arg-type]
