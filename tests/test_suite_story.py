"""The whole story on digits: a session finds and labels failure regions, exports them as a
regression suite, the original model fails it, the corrected model passes it, and the
``defuse-widgets check`` command's exit codes say the same (run as a real subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from session_fixtures import label_true_class, ready_session

import defuse_widgets as dw

ROOT = Path(dw.__file__).parent.parent


def check_command(suite: Path, model_file: Path, junit: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env["OMP_NUM_THREADS"] = "1"
    argv = [sys.executable, "-m", "defuse_widgets.cli", "check", str(suite)]
    argv += ["--model-file", str(model_file), "--device", "cpu", "--dataset", "digits"]
    argv += ["--junit", str(junit)]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)


def test_regions_become_a_regression_suite(
    digits, digits_classifier, digits_vae, digits_model_paths, tmp_path: Path
) -> None:
    s = ready_session(digits_classifier, digits_vae, digits)  # identify + distill
    assert s.regions is not None and len(s.regions) >= 2
    for region in s.regions:  # a person labels each region with the class its images show
        label_true_class(s, region.id)
    suite = s.export_tests(tmp_path / "suite")  # 200 held-out samples per region, min 0.8

    before = dw.check_suite(s.classifier, suite, device="cpu", data=digits)
    assert not before.passed
    with pytest.raises(AssertionError, match="regions of the suite .* failed"):
        dw.testing.assert_suite(s.classifier, suite, device="cpu")
    failing = check_command(suite, digits_model_paths["classifier"], tmp_path / "before.xml")
    assert failing.returncode == 1, failing.stderr
    assert "FAILED" in failing.stdout

    # one forceful round on the labeled regions, every step kept (s.classifier is a copy); the
    # default round is gentler and may keep its starting weights when fixing all six regions
    # costs a class on validation (tests/test_guard.py covers that)
    s.correct(steps=600, lr=0.01, keep=0.0, early_stopping=False)
    after = dw.check_suite(s.classifier, suite, device="cpu", data=digits)
    assert len(after.failed) < len(before.failed), (after.failed, before.failed)
    assert sum(r.accuracy for r in after.regions) > sum(r.accuracy for r in before.regions)
    fixed = tmp_path / "fixed.safetensors"
    dw.save_model(s.classifier, fixed)
    checked = check_command(suite, fixed, tmp_path / "after.xml")
    assert checked.returncode == (0 if after.passed else 1), checked.stderr
    failures = ET.parse(tmp_path / "after.xml").getroot().findall(".//failure")
    assert len(failures) == len(after.failed)
    assert len(ET.parse(tmp_path / "before.xml").getroot().findall(".//failure")) == len(
        before.failed
    )

    s.revert()  # the original weights fail again
    assert not dw.check_suite(s.classifier, suite, device="cpu").passed
    print(f"\nbefore:\n{before.table()}\nafter one round of 600 steps:\n{after.table()}")
    print(f"exit codes: original {failing.returncode}, corrected {checked.returncode}")
