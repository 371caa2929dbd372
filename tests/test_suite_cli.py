"""The ``defuse-widgets check`` command: the ways to name a model, JUnit XML, exit codes 0/1/2."""

from __future__ import annotations

import pickle
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from session_fixtures import ready_session

import defuse_widgets as dw
from defuse_widgets.cli import main
from defuse_widgets.models.files import ExportedModel, load_classifier, weights_only_loads

FACTORY = """
import defuse_widgets as dw

def make():
    return dw.SmallCNN(image_shape=(1, 8, 8), num_classes=10, width={width})
"""


@pytest.fixture(scope="module")
def suites(digits, digits_classifier, digits_vae, tmp_path_factory) -> dict[str, Path]:
    """One suite the shared classifier fails (its own failure regions) and one it passes."""
    s = ready_session(digits_classifier, digits_vae, digits)
    assert s.regions is not None
    for region in s.regions:
        s.label(region.id, region.transition[0])
    root = tmp_path_factory.mktemp("cli-suites")
    return {
        "fails": s.export_tests(root / "fails", samples=16),
        "passes": s.export_tests(root / "passes", samples=16, min_accuracy=0.0),
    }


@pytest.fixture()
def factory(digits_classifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``suite_models:make`` in the current directory and the shared classifier's weights."""
    width = digits_classifier.config["width"]
    (tmp_path / "suite_models.py").write_text(FACTORY.format(width=width))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    weights = tmp_path / "clf.safetensors"
    dw.save_weights(digits_classifier, weights)
    return weights


def test_factory_and_weights(suites, factory: Path, tmp_path: Path, capsys) -> None:
    junit = tmp_path / "junit.xml"
    args = ["check", "--model", "suite_models:make", "--weights", str(factory), "--device", "cpu"]
    assert main([*args[:1], str(suites["fails"]), *args[1:], "--junit", str(junit)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "regions: FAILED" in out
    root = ET.parse(junit).getroot()
    cases = root.findall("./testsuite/testcase")
    assert cases and len(root.findall("./testsuite/testcase/failure")) == len(cases)
    assert main([*args[:1], str(suites["passes"]), *args[1:], "--junit", str(junit)]) == 0
    assert ET.parse(junit).getroot().findall("./testsuite/testcase/failure") == []


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")
def test_torchscript_export_and_demo_files(suites, digits, digits_classifier, tmp_path) -> None:
    x = digits.x_test[:4]
    scripted = torch.jit.trace(digits_classifier, x)
    scripted.save(str(tmp_path / "clf.ts"))
    program = torch.export.export(
        digits_classifier, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}
    )
    torch.export.save(program, str(tmp_path / "clf.pt2"))
    dw.save_model(digits_classifier, tmp_path / "clf.safetensors")
    for name in ("clf.ts", "clf.pt2", "clf.safetensors"):
        for suite, code in ((suites["fails"], 1), (suites["passes"], 0)):
            argv = ["check", str(suite), "--model-file", str(tmp_path / name), "--device", "cpu"]
            assert main(argv) == code, name
    exported = load_classifier(model_file=tmp_path / "clf.pt2")
    assert isinstance(exported, ExportedModel)
    expect = dw.check_suite(digits_classifier, suites["fails"], device="cpu").regions
    got = dw.check_suite(exported, suites["fails"], device="cpu").regions
    assert [r.accuracy for r in got] == [r.accuracy for r in expect]


def test_bad_input_exits_2(suites, digits_classifier, factory: Path, tmp_path, capsys) -> None:
    suite = str(suites["fails"])
    pickled = tmp_path / "model.pt"
    torch.save(digits_classifier, pickled)  # a pickle: never loaded
    cases = {
        "model_file: expected a TorchScript file": ["--model-file", str(pickled)],
        "model: expected MODULE:FACTORY": ["--model", "suite_models"],
        "model: cannot find 'suite_models:nope'": ["--model", "suite_models:nope"],
        "weights: expected a .safetensors file": [
            "--model",
            "suite_models:make",
            "--weights",
            str(pickled),
        ],  # fmt: skip
        "weights: expected no --weights with --model-file": [
            "--model-file",
            str(factory),
            "--weights",
            str(factory),
        ],  # fmt: skip
        "name: expected one of": ["--model-file", str(factory), "--dataset", "nope"],
    }
    dw.save_model(digits_classifier, factory)  # now a demo model file
    for message, extra in cases.items():
        assert main(["check", suite, *extra, "--device", "cpu"]) == 2, message
        assert message in capsys.readouterr().err
    assert main(["check", str(tmp_path), "--model-file", str(factory)]) == 2
    assert "path: expected a suite directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # argparse: neither --model nor --model-file
        main(["check", suite])
    assert info.value.code == 2


def test_weights_that_do_not_fit_the_factory(suites, tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "wide_models.py").write_text(FACTORY.format(width=64))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    small = dw.SmallCNN(image_shape=(1, 8, 8), num_classes=10, width=8)
    dw.save_weights(small, tmp_path / "small.safetensors")
    argv = ["check", str(suites["fails"]), "--model", "wide_models:make"]
    assert main([*argv, "--weights", str(tmp_path / "small.safetensors")]) == 2
    assert "does not fit the model of wide_models:make" in capsys.readouterr().err


class Payload:
    """Unpickling this would run code; ``weights_only_loads`` must refuse it."""

    def __reduce__(self):  # pragma: no cover - never called when the guard works
        return (print, ("unpickled!",))


def test_torch_export_payloads_load_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "payload.pt"
    torch.save({"obj": Payload()}, path)
    with weights_only_loads(), pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=False)
    assert torch.load is not None and torch.load.__name__ == "load"
