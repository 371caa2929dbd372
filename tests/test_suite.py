"""Regression suites: export from a session, the files, check_suite, assert_suite, bad input.

The whole story (find, label, export, the original fails, the corrected model passes, the CLI
says the same) is in ``tests/test_suite_story.py``; the ``check`` command in
``tests/test_suite_cli.py``.
"""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from session_fixtures import new_session, ready_session
from torch import nn

import defuse_widgets as dw
from defuse_widgets.data.fingerprint import dataset_fingerprint
from defuse_widgets.regions.membership import members
from defuse_widgets.suite.check import _judge
from defuse_widgets.suite.export import SuiteSource, export_suite
from defuse_widgets.suite.files import FORMAT, VERSION, SuiteRegion, load_suite

SAMPLES = 40


@pytest.fixture(scope="module")
def labeled(digits, digits_classifier, digits_vae) -> dw.DefuseSession:
    """A session over the shared errors, every region labeled with its true class (never tuned)."""
    s = ready_session(digits_classifier, digits_vae, digits)
    assert s.regions is not None
    for region in s.regions:
        s.label(region.id, region.transition[0])
    return s


@pytest.fixture(scope="module")
def suite(labeled: dw.DefuseSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return labeled.export_tests(tmp_path_factory.mktemp("suites") / "digits", samples=SAMPLES)


def test_manifest_says_what_the_suite_holds(labeled: dw.DefuseSession, suite: Path) -> None:
    doc = json.loads((suite / "manifest.json").read_text())
    assert doc["format"] == FORMAT and doc["version"] == VERSION
    assert doc["dataset"] == dataset_fingerprint(labeled.data)
    assert doc["image_shape"] == [1, 8, 8]
    assert doc["classes"] == list(labeled.data.classes)
    assert doc["sampling"] | {"distribution": None} == {
        "distribution": None,
        "seed": labeled.seed,
        "stream": "eval",
        "stream_id": 1,
        "samples": SAMPLES,
        "scale": 1.0,
    }
    assert [r["id"] for r in doc["regions"]] == sorted(labeled.correctable())
    for entry in doc["regions"]:
        assert entry["label"] == labeled.labels[entry["id"]]
        assert entry["min_accuracy"] == entry["min_real_accuracy"] == 0.8
        assert (suite / entry["sheet"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # safetensors, JSON and PNG only: nothing to unpickle
    assert {p.suffix for p in suite.iterdir()} == {".json", ".safetensors", ".png"}


def test_samples_are_the_held_out_evaluation_draws(labeled: dw.DefuseSession, suite: Path) -> None:
    assert labeled.regions is not None
    for rid in labeled.correctable():
        tensors = load_file(str(suite / f"region-{rid}.safetensors"))
        drawn = labeled.regions.sample(rid, SAMPLES, purpose="eval")
        assert torch.equal(tensors["samples"], drawn.images)
        assert torch.equal(tensors["sample_codes"], drawn.codes)


def test_check_matches_the_sessions_own_evaluation(labeled: dw.DefuseSession, suite: Path) -> None:
    """With the same draws, the suite's accuracy is evaluate()'s held-out sample accuracy."""
    result = dw.check_suite(labeled.classifier, suite, device="cpu", data=labeled.data)
    ev = labeled.evaluate(samples=SAMPLES)
    assert {r.id: r.accuracy for r in result.regions} == pytest.approx(
        {rid: ev.regions[rid].sample_accuracy for rid in ev.regions}
    )
    assert not result.passed and result.failed == result.regions  # these are failure regions
    assert all(r.real_images == 0 for r in result.regions)  # reference errors sit off the data


def test_result_table_figure_worst_and_junit(labeled: dw.DefuseSession, suite: Path) -> None:
    result = dw.check_suite(labeled.classifier, suite, device="cpu", worst=5)
    text = repr(result)
    assert "region" in text and "FAIL" in text and f"{len(result.regions)} regions: FAILED" in text
    fig = result.figure()
    assert [t.type for t in fig.data] == ["bar", "bar", "scatter"]
    assert len(result.worst) == 5 and result.worst_images is not None
    assert result.worst_images.shape == (5, 1, 8, 8)
    probs = [w["probability"] for w in result.worst]
    assert probs == sorted(probs) and all(w["predicted"] != w["label"] for w in result.worst)
    root = ET.fromstring(result.to_junit())
    cases = root.findall("./testsuite/testcase")
    assert len(cases) == len(result.regions)
    assert len(root.findall("./testsuite/testcase/failure")) == len(result.failed)
    assert result.to_dict()["regions"][0]["accuracy"] == result.regions[0].accuracy


def test_assert_suite_names_the_failing_regions(labeled: dw.DefuseSession, suite: Path) -> None:
    with pytest.raises(AssertionError) as info:
        dw.testing.assert_suite(labeled.classifier, suite, device="cpu")
    message = str(info.value)
    first = dw.check_suite(labeled.classifier, suite, device="cpu").regions[0]
    low, high = first.interval
    assert (
        f"region {first.id} ({first.label_name}): accuracy {first.accuracy:.3f} "
        f"(90% interval {low:.2f}-{high:.2f}) < 0.80"
    ) in message


def test_a_check_on_too_few_images_says_so_instead_of_failing() -> None:
    region = SuiteRegion(3, 1, "one", 0.8, 0.8, torch.zeros(200, 1, 2, 2),
                         torch.zeros(4, 1, 2, 2), torch.tensor([1, 1, 0, 0]))  # fmt: skip
    sure = torch.zeros(200, 2)
    sure[:, 1] = 1.0  # every sample right
    half = torch.tensor([[0.0, 1.0]] * 4)  # 2 of the 4 real images right: 0.50 < 0.80
    result = _judge(region, sure, half)
    assert result.passed and result.real_accuracy == 0.5
    assert result.real_interval[0] < 0.5 < 0.8 <= result.real_interval[1]
    assert "too few images to tell" in result.notes[0]
    wrong = torch.zeros(200, 2)
    wrong[:, 0] = 1.0  # every sample wrong: surely below
    failed = _judge(region, wrong, half)
    assert not failed.passed and failed.interval[1] < 0.8


def test_thresholds_and_a_subset_of_regions(labeled: dw.DefuseSession, tmp_path: Path) -> None:
    rid = sorted(labeled.correctable())[0]
    path = labeled.export_tests(tmp_path / "one", regions=[rid], samples=8, min_accuracy={rid: 0})
    result = dw.testing.assert_suite(labeled.classifier, path, device="cpu")
    assert [r.id for r in result.regions] == [rid] and result.passed


def test_a_suite_exports_from_explicit_regions_and_a_model(
    labeled: dw.DefuseSession, suite: Path, tmp_path: Path
) -> None:
    """The suite layer takes its inputs explicitly (no session): the same regions, labels,
    decode and predict functions and test codes give byte-identical region files."""
    s = labeled
    assert s.regions is not None
    source = SuiteSource(
        regions=s.regions,
        labels=s.labels,
        decode=s.decode,
        predict=s.predict,
        data=s.data,
        test_codes=s.split_codes("test"),
        test_probability=s.region_probability("test"),
    )
    path = export_suite(source, tmp_path / "plain", samples=SAMPLES)
    ours, theirs = (json.loads((p / "manifest.json").read_text()) for p in (path, suite))
    assert [r["sha256"] for r in ours["regions"]] == [r["sha256"] for r in theirs["regions"]]
    without_codes = SuiteSource(s.regions, s.labels, s.decode, s.predict, s.data)
    with pytest.raises(ValueError, match="include_real needs the test codes"):
        export_suite(without_codes, tmp_path / "refused", samples=4)
    assert not (tmp_path / "refused").exists()
    export_suite(without_codes, tmp_path / "samples-only", samples=4, include_real=False)
    assert all(r.real.shape[0] == 0 for r in load_suite(tmp_path / "samples-only").regions)


def test_real_members_travel_with_their_own_labels(
    digits, digits_classifier, digits_vae, tmp_path: Path
) -> None:
    """Gaussian-search regions hold real test images; they keep their dataset labels."""
    s = new_session(digits_classifier, digits_vae, digits)
    s.identify(strategy="gaussian", split="test", limit=40, samples=20, max_per_image=2)
    s.distill(max_regions=3)
    assert s.regions is not None
    rid = s.regions.ids[0]
    s.label(rid, s.regions.get(rid).transition[0])
    path = s.export_tests(tmp_path / "real", samples=8, min_real_accuracy=0.5)
    index = members(s.regions, s.split_codes("test"), rid, s.region_probability("test"))
    tensors = load_file(str(path / f"region-{rid}.safetensors"))
    assert len(index) > 0 and torch.equal(tensors["real_index"], index)
    assert torch.equal(tensors["real"], digits.x_test[index])
    assert torch.equal(tensors["real_labels"], digits.y_test[index])
    (region,) = dw.check_suite(s.classifier, path, device="cpu").regions
    with torch.no_grad():
        expect = (s.classifier(digits.x_test[index]).argmax(1) == digits.y_test[index]).float()
    assert region.real_images == len(index)
    assert region.real_accuracy == pytest.approx(float(expect.mean()))
    assert region.min_real_accuracy == 0.5
    plain = s.export_tests(tmp_path / "plain", samples=8, include_real=False)
    assert len(load_suite(plain).regions[0].real) == 0


# ----- bad input -----


def test_export_refuses_bad_arguments_before_writing(
    labeled: dw.DefuseSession, digits, digits_classifier, digits_vae, tmp_path: Path
) -> None:
    target = tmp_path / "suite"
    bare = ready_session(digits_classifier, digits_vae, digits)
    with pytest.raises(ValueError, match="regions: no region is labeled with a class"):
        bare.export_tests(target)
    bare.label(0, dw.MODEL_IS_RIGHT)
    with pytest.raises(ValueError, match="regions: expected regions labeled with a class"):
        bare.export_tests(target, regions=[0])
    with pytest.raises(KeyError, match="region_id"):
        labeled.export_tests(target, regions=[99])
    for bad in (1.5, -0.1, "high"):
        with pytest.raises(ValueError, match="min_accuracy"):
            labeled.export_tests(target, min_accuracy=bad)
    with pytest.raises(ValueError, match="min_accuracy: expected a threshold for every"):
        labeled.export_tests(target, min_accuracy={})
    with pytest.raises(ValueError, match="samples"):
        labeled.export_tests(target, samples=0)
    with pytest.raises(RuntimeError, match="no regions"):
        new_session(digits_classifier, digits_vae, digits).export_tests(target)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="path: expected a directory path"):
        labeled.export_tests(tmp_path / "file" / "suite")
    assert not target.exists() and [p.name for p in tmp_path.iterdir()] == ["file"]
    nested = labeled.export_tests(tmp_path / "runs" / "a" / "suite", samples=4)
    assert (nested / "manifest.json").is_file()


def test_export_never_overwrites_what_is_not_a_suite(
    labeled: dw.DefuseSession, tmp_path: Path
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="expected a new or empty directory"):
        labeled.export_tests(mine, samples=4)
    with pytest.raises(ValueError, match="not a defuse-widgets suite"):
        labeled.export_tests(mine, samples=4, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me"
    path = labeled.export_tests(tmp_path / "suite", samples=4)
    labeled.export_tests(path, samples=6, overwrite=True)
    assert json.loads((path / "manifest.json").read_text())["sampling"]["samples"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "suite"]  # no temp folder left


@pytest.fixture()
def copied(suite: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(suite, tmp_path / "copy"))


def test_damaged_or_foreign_suites_are_refused(
    labeled: dw.DefuseSession, copied: Path, tmp_path: Path
) -> None:
    clf = labeled.classifier
    with pytest.raises(ValueError, match="path: expected a suite directory"):
        dw.check_suite(clf, tmp_path / "nothing", device="cpu")
    manifest = copied / "manifest.json"
    doc = json.loads(manifest.read_text())
    tensor_file = copied / doc["regions"][0]["file"]
    data = bytearray(tensor_file.read_bytes())
    data[-1] ^= 0xFF
    tensor_file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged .*SHA-256"):
        dw.check_suite(clf, copied, device="cpu")
    tensor_file.unlink()
    with pytest.raises(ValueError, match="lacks region-"):
        dw.check_suite(clf, copied, device="cpu")
    manifest.write_text(json.dumps({**doc, "format": "something-else"}))
    with pytest.raises(ValueError, match="does not declare format 'defuse-widgets-suite'"):
        dw.check_suite(clf, copied, device="cpu")
    manifest.write_text(json.dumps({**doc, "version": 99}))
    with pytest.raises(ValueError, match="format version 99 .*reads versions 1"):
        dw.check_suite(clf, copied, device="cpu")
    manifest.write_text(json.dumps({k: v for k, v in doc.items() if k != "classes"}))
    with pytest.raises(ValueError, match="damaged"):
        dw.check_suite(clf, copied, device="cpu")
    manifest.write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json is not valid JSON"):
        dw.check_suite(clf, copied, device="cpu")


def test_a_suite_from_another_dataset_is_refused(labeled: dw.DefuseSession, suite: Path) -> None:
    d = labeled.data
    other = dw.from_tensors(d.x_train, d.y_train, d.x_test[:100], d.y_test[:100], d.classes)
    with pytest.raises(ValueError, match="data: the suite .* was exported from another dataset"):
        dw.check_suite(labeled.classifier, suite, device="cpu", data=other)


def test_a_suite_with_the_first_fingerprint_still_checks(
    labeled: dw.DefuseSession, suite: Path, copied: Path
) -> None:
    """Suites exported before the fingerprint held a hash recorded ``label_sum`` instead."""
    from defuse_widgets.data.fingerprint import legacy_label_sum

    doc = json.loads((copied / "manifest.json").read_text())
    doc["dataset"].pop("hash")
    doc["dataset"]["label_sum"] = legacy_label_sum(labeled.data)
    (copied / "manifest.json").write_text(json.dumps(doc))
    data = labeled.data
    assert len(load_suite(copied, data=data).regions) == len(load_suite(suite).regions)
    doc["dataset"]["label_sum"] += 1
    (copied / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="data: the suite .* was exported from another dataset"):
        load_suite(copied, data=data)


def test_models_that_do_not_fit_are_refused(labeled: dw.DefuseSession, suite: Path) -> None:
    clf = copy.deepcopy(labeled.classifier)
    cases = {
        "expected logits for the suite's 10 classes, got 5": nn.Sequential(
            nn.Flatten(), nn.Linear(64, 5)
        ),
        "expected a classifier of images \\(1, 8, 8\\)": nn.Sequential(
            nn.Flatten(), nn.Linear(784, 10)
        ),
        "expected logits, got probabilities": nn.Sequential(clf, nn.Softmax(1)),
    }
    for message, model in cases.items():
        with pytest.raises(ValueError, match=f"model: {message}"):
            dw.check_suite(model, suite, device="cpu")
    for bad in ({"worst": -1}, {"batch_size": 0}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))}: expected"):
            dw.check_suite(clf, suite, device="cpu", **bad)
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        dw.check_suite(lambda x: x, suite, device="cpu")  # type: ignore[arg-type]


def test_check_restores_the_models_mode(labeled: dw.DefuseSession, suite: Path) -> None:
    model = copy.deepcopy(labeled.classifier).train()
    dw.check_suite(model, suite, device="cpu")
    assert model.training
