"""Save and load: exact round trip, continuing after load, refusal of damaged or foreign dirs."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import pickle
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from session_fixtures import label_true_class, ready_session, state_equal, weights
from torch import nn

import defuse_widgets as dw
from defuse_widgets.search.errors import ERROR_FIELDS

STEPS = {"steps": 3, "batch_size": 16}


@pytest.fixture(scope="module")
def saved(
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
    digits: dw.ImageDataset,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dw.DefuseSession, Path]:
    """A session with labels, two rounds, reverted to round 1, saved."""
    s = ready_session(digits_classifier, digits_vae, digits)
    assert s.regions is not None and len(s.regions) >= 3
    label_true_class(s, 0)
    s.label(1, dw.MODEL_IS_RIGHT)
    s.label(2, dw.UNRECOGNIZABLE)
    s.correct(**STEPS)
    s.correct(**STEPS)
    s.revert(1)
    path = s.save(tmp_path_factory.mktemp("saved") / "session")
    return s, path


def load(path: Path, classifier: nn.Module, vae: nn.Module, **kw: Any) -> dw.DefuseSession:
    return dw.DefuseSession.load(path, classifier=copy.deepcopy(classifier), generator=vae, **kw)


def damaged(saved: tuple[dw.DefuseSession, Path], tmp_path: Path) -> Path:
    """A private copy of the saved directory to damage."""
    return Path(shutil.copytree(saved[1], tmp_path / "copy"))


def data_file(path: Path, key: str) -> Path:
    """The data file ``key`` ("weights", "errors", "regions") that the manifest names."""
    doc = json.loads((path / "session.json").read_text())
    return path / doc["files"][key]["name"]


def rewrite_data_file(path: Path, key: str, tensors: dict[str, torch.Tensor]) -> None:
    """Replace a data file and its manifest entry (size and checksum), as a forger would."""
    from safetensors.torch import save

    data = save(tensors)
    data_file(path, key).write_bytes(data)
    doc = json.loads((path / "session.json").read_text())
    doc["files"][key].update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    (path / "session.json").write_text(json.dumps(doc))


def nan_equal(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if hasattr(a, "to_dict") and hasattr(b, "to_dict"):  # records: compare as their dicts
        return type(a) is type(b) and nan_equal(a.to_dict(), b.to_dict())
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(nan_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(nan_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


# ----- round trip -----


def test_save_writes_safetensors_and_json(saved: tuple[dw.DefuseSession, Path]) -> None:
    _, path = saved
    doc = json.loads((path / "session.json").read_text())
    assert doc["format"] == "defuse-widgets-session" and doc["version"] == 2
    assert set(doc["files"]) == {"weights", "errors", "regions"}
    names = {p.name for p in path.iterdir()}
    assert names == {"session.json"} | {e["name"] for e in doc["files"].values()}
    for key, entry in doc["files"].items():
        data = (path / entry["name"]).read_bytes()
        assert re.fullmatch(rf"{key}\.[0-9a-f]{{12}}\.safetensors", entry["name"])
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert not any(p.suffix in (".pt", ".pth", ".pkl", ".pickle") for p in path.iterdir())


def test_round_trip_is_exact(
    saved: tuple[dw.DefuseSession, Path],
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
) -> None:
    s, path = saved
    s2 = load(path, digits_classifier, digits_vae)
    assert s.errors is not None and s2.errors is not None
    for name in ERROR_FIELDS:
        a, b = getattr(s.errors, name), getattr(s2.errors, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    for name in ("settings", "images_searched", "decodes", "seconds", "split"):
        assert getattr(s.errors, name) == getattr(s2.errors, name), name
    assert s.regions is not None and s2.regions is not None
    assert [r.summary() for r in s.regions] == [r.summary() for r in s2.regions]
    for a, b in zip(s.regions, s2.regions):
        assert torch.equal(a.mean, b.mean) and torch.equal(a.covariance, b.covariance)
    assert torch.equal(s.regions.assignments, s2.regions.assignments)
    for key, value in s.regions.mixture.tensors().items():
        assert torch.equal(value, s2.regions.mixture.tensors()[key]), key
    assert s.regions.settings == s2.regions.settings and s.regions.seed == s2.regions.seed
    assert s2.labels == s.labels and all(type(k) is int for k in s2.labels)
    assert s2.seed == s.seed and s2.rounds == s.rounds == 2
    assert s2.active_round == s.active_round == 1
    assert state_equal(weights(s2.classifier), weights(s.classifier))
    for k in range(3):
        assert state_equal(s2._snapshots[k], s._snapshots[k]), k
    # the same metrics: history as it was (int region ids, NaN) and a fresh evaluation
    assert nan_equal(s2.history, s.history)
    assert nan_equal(s2.evaluate(), s.evaluate())
    # the same held-out draws
    a, b = s.regions.sample(0, 8, purpose="eval"), s2.regions.sample(0, 8, purpose="eval")
    assert torch.equal(a.codes, b.codes) and torch.equal(a.predictions, b.predictions)


def test_continue_correcting_after_load(
    saved: tuple[dw.DefuseSession, Path],
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
) -> None:
    """Two loads of the same directory continue identically, and revert works across the load."""
    _, path = saved
    s1 = load(path, digits_classifier, digits_vae)
    s2 = load(path, digits_classifier, digits_vae)
    original = s1._snapshots[0]
    r1, r2 = s1.correct(**STEPS), s2.correct(**STEPS)
    assert r1.round == r2.round == 3 and r1.base_round == 1
    assert r1.losses == r2.losses
    assert state_equal(weights(s1.classifier), weights(s2.classifier))
    assert len(s1.history) == 3
    s1.revert()
    assert state_equal(weights(s1.classifier), original)
    # and the continued session saves and loads again
    again = s1.save(path.parent / "again")
    s3 = load(again, digits_classifier, digits_vae)
    assert s3.rounds == 3 and s3.active_round == 0
    assert state_equal(weights(s3.classifier), original)


def test_save_and_load_an_empty_session(
    digits_classifier: nn.Module, digits_vae: nn.Module, digits: dw.ImageDataset, tmp_path: Path
) -> None:
    s = dw.DefuseSession(
        copy.deepcopy(digits_classifier), digits_vae, digits, device="cpu", progress=False
    )
    s.save(tmp_path / "empty")
    s2 = load(tmp_path / "empty", digits_classifier, digits_vae, data=digits)
    assert s2.errors is None and s2.regions is None and s2.labels == {} and s2.rounds == 0
    assert state_equal(weights(s2.classifier), weights(s.classifier))


def test_load_never_unpickles(
    saved: tuple[dw.DefuseSession, Path],
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("load unpickled something")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    s2 = load(saved[1], digits_classifier, digits_vae)
    assert s2.rounds == 2


# ----- refusals -----


def refused(path: Path, classifier: nn.Module, vae: nn.Module, match: str, **kw: Any) -> None:
    with pytest.raises(ValueError, match=match):
        load(path, classifier, vae, **kw)


def test_missing_directory(digits_classifier: nn.Module, digits_vae: nn.Module, tmp_path: Path):
    refused(tmp_path / "absent", digits_classifier, digits_vae, "no such directory")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "session.json is missing"),
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b"[1, 2, 3]", "does not declare format"),
        (b'{"format": "something-else", "version": 1}', "does not declare format"),
        (b'{"version": 1}', "does not declare format"),
    ],
)
def test_bad_session_json(
    saved: tuple[dw.DefuseSession, Path],
    tmp_path: Path,
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
    content: bytes | None,
    match: str,
) -> None:
    path = damaged(saved, tmp_path)
    if content is None:
        (path / "session.json").unlink()
    else:
        (path / "session.json").write_bytes(content)
    refused(path, digits_classifier, digits_vae, match)


def edit_json(path: Path, change: Any) -> None:
    doc = json.loads((path / "session.json").read_text())
    change(doc)
    (path / "session.json").write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.update(version=3), "format version 3"),
        (lambda d: d.update(version="1"), "format version"),
        (lambda d: d.pop("version"), "format version"),
        (lambda d: d.pop("dataset"), "incomplete or inconsistent"),
        (lambda d: d.pop("snapshots"), "incomplete or inconsistent"),
        (lambda d: d.update(snapshots=2), "not 2 snapshots"),
        (lambda d: d.update(snapshots=4), "not 4 snapshots"),
        (lambda d: d.update(active_round=7), "active round 7 out of range"),
        (lambda d: d.update(latent_dim=3), "latent"),
        (lambda d: d["labels"].update({"99": 1}), "incomplete or inconsistent"),
        (lambda d: d["labels"].update({"0": 42}), "label"),
        (lambda d: d.update(errors=None), "regions but no errors"),
        (lambda d: d["regions"]["regions"][0].update(component=999), "inconsistent"),
        (lambda d: d["regions"]["regions"][0].pop("weight"), "inconsistent"),
        (lambda d: d["errors"].pop("settings"), "inconsistent"),
        (lambda d: d["dataset"].update(n_test=10), "different dataset"),
    ],
)
def test_inconsistent_session_json(
    saved: tuple[dw.DefuseSession, Path],
    tmp_path: Path,
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
    change: Any,
    match: str,
) -> None:
    path = damaged(saved, tmp_path)
    edit_json(path, change)
    refused(path, digits_classifier, digits_vae, match)


@pytest.mark.parametrize("name", ["weights", "errors", "regions"])
@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage", "pickle", "empty"])
def test_damaged_safetensors(
    saved: tuple[dw.DefuseSession, Path],
    tmp_path: Path,
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
    name: str,
    damage: str,
) -> None:
    path = damaged(saved, tmp_path)
    file = data_file(path, name)
    data = file.read_bytes()
    if damage == "missing":
        file.unlink()
    elif damage == "truncated":
        file.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        file.write_bytes(bytes(range(256)) * 8)
    elif damage == "pickle":
        torch.save({"0.weight": torch.zeros(3)}, file)
    else:
        file.write_bytes(b"")
    match = {"pickle": "not a safetensors file .*zip archive.*not unpickled or executed"}
    refused(path, digits_classifier, digits_vae, rf"{file.name} .*{match.get(damage, '')}")


def test_foreign_tensors_in_safetensors_files(
    saved: tuple[dw.DefuseSession, Path],
    tmp_path: Path,
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
) -> None:
    path = damaged(saved, tmp_path)
    rewrite_data_file(path, "errors", {"codes": torch.zeros(3, 2)})
    refused(path, digits_classifier, digits_vae, r"errors\.[0-9a-f]+\.safetensors holds")

    path = Path(shutil.copytree(saved[1], tmp_path / "copy2"))
    rewrite_data_file(path, "regions", {"weights": torch.ones(2)})
    refused(path, digits_classifier, digits_vae, r"regions\.[0-9a-f]+\.safetensors")

    path = Path(shutil.copytree(saved[1], tmp_path / "copy3"))
    rewrite_data_file(path, "weights", {"nodot": torch.ones(2)})
    refused(path, digits_classifier, digits_vae, "weight")


def test_a_classifier_with_other_parameter_shapes(
    saved: tuple[dw.DefuseSession, Path], digits_vae: nn.Module, digits: dw.ImageDataset
) -> None:
    wider = dw.SmallCNN(digits.image_shape, digits.num_classes, width=8)
    before = weights(wider)
    refused(saved[1], wider, digits_vae, "does not match the classifier")
    assert state_equal(weights(wider), before), "a refused load leaves the classifier alone"


def test_a_generator_with_another_latent_size(
    saved: tuple[dw.DefuseSession, Path], digits_classifier: nn.Module, digits: dw.ImageDataset
) -> None:
    vae = dw.ConvVAE(digits.image_shape, latent_dim=3).eval()
    refused(saved[1], digits_classifier, vae, "latent size")


def test_a_different_dataset(
    saved: tuple[dw.DefuseSession, Path],
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
    digits: dw.ImageDataset,
) -> None:
    other = dw.from_tensors(
        digits.x_train[:200],
        digits.y_train[:200],
        digits.x_test[:100],
        digits.y_test[:100],
        classes=digits.classes,
        name="digits",
    )
    refused(saved[1], digits_classifier, digits_vae, "different dataset", data=other)
    shuffled = dw.from_tensors(
        digits.x_train,
        digits.y_train,
        digits.x_test,
        digits.y_test.roll(1),
        classes=digits.classes,
        name="digits",
    )
    refused(saved[1], digits_classifier, digits_vae, "different dataset", data=shuffled)
    x_test = digits.x_test.clone()
    x_test[0, 0, 0, 0] = 1.0 - x_test[0, 0, 0, 0]  # one pixel: the labels alone would not see it
    one_pixel = dw.from_tensors(
        digits.x_train, digits.y_train, x_test, digits.y_test, classes=digits.classes, name="digits"
    )
    refused(saved[1], digits_classifier, digits_vae, "different dataset", data=one_pixel)


def test_a_session_with_the_first_fingerprint_still_loads(
    saved: tuple[dw.DefuseSession, Path],
    tmp_path: Path,
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
    digits: dw.ImageDataset,
) -> None:
    """Sessions saved before the fingerprint held a hash recorded ``label_sum`` instead."""
    from defuse_widgets.data.fingerprint import legacy_label_sum

    def first_fingerprint(doc: dict[str, Any], label_sum: int) -> None:
        assert doc["dataset"].pop("hash").startswith("sha256:")
        doc["dataset"]["label_sum"] = label_sum

    path = damaged(saved, tmp_path)
    edit_json(path, lambda d: first_fingerprint(d, legacy_label_sum(digits)))
    s = load(path, digits_classifier, digits_vae, data=digits)
    assert s.active_round == saved[0].active_round
    edit_json(path, lambda d: d["dataset"].update(label_sum=legacy_label_sum(digits) + 1))
    refused(path, digits_classifier, digits_vae, "different dataset", data=digits)


def test_a_session_of_another_named_dataset_needs_data(
    saved: tuple[dw.DefuseSession, Path],
    tmp_path: Path,
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
) -> None:
    path = damaged(saved, tmp_path)
    edit_json(path, lambda d: d["dataset"].update(name="fashion-mnist"))
    refused(path, digits_classifier, digits_vae, "data")
