"""The files a well-kept package ships beside its code: CHANGELOG.md (Keep a Changelog) and
CITATION.cff (Citation File Format 1.2.0), both in step with ``defuse_widgets/_version.py``.

CITATION.cff is validated against the format's own JSON schema, ``tests/data/citation-file-
format-1.2.0.schema.json`` (CC BY 4.0, the Citation File Format authors; copied from the
``cffconvert`` 2.0.0 wheel). ``cffconvert`` itself is not a test dependency: it pins
``jsonschema<4``, which JupyterLab's dependencies cannot share.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import Any

import pytest

import defuse_widgets as dw

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parent.parent
CHANGELOG = ROOT / "CHANGELOG.md"
CITATION = ROOT / "CITATION.cff"
SCHEMA = Path(__file__).parent / "data" / "citation-file-format-1.2.0.schema.json"
SECTIONS = ("Added", "Changed", "Deprecated", "Removed", "Fixed", "Security")
RELEASE = re.compile(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$")


def _releases() -> list[tuple[str, str]]:
    lines = CHANGELOG.read_text(encoding="utf-8").splitlines()
    return [m.groups() for m in map(RELEASE.match, lines) if m]  # type: ignore[misc]


def _citation() -> dict[str, Any]:
    doc = yaml.safe_load(CITATION.read_text(encoding="utf-8"))
    assert isinstance(doc, dict), "CITATION.cff: expected a YAML mapping"
    return doc


def test_changelog_keeps_a_changelog() -> None:
    lines = CHANGELOG.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "# Changelog"
    assert "keepachangelog.com" in CHANGELOG.read_text(encoding="utf-8")
    versions = [line for line in lines if line.startswith("## ")]
    assert versions[0] == "## [Unreleased]", "the first section is Unreleased"
    for line in versions[1:]:
        assert RELEASE.match(line), (
            f"CHANGELOG.md: expected '## [X.Y.Z] - YYYY-MM-DD', got {line!r}"
        )
    for line in lines:
        if line.startswith("### "):
            assert line[4:] in SECTIONS, f"CHANGELOG.md: unknown section {line!r}"
    releases = _releases()
    assert releases, "CHANGELOG.md has no release"
    assert releases[0][0] == dw.__version__, "the latest release is the package's version"
    dates = [datetime.date.fromisoformat(date) for _, date in releases]
    assert dates == sorted(dates, reverse=True), "releases newest first"
    assert len({v for v, _ in releases}) == len(releases)


def test_citation_is_valid_cff() -> None:
    doc = _citation()
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text(encoding="utf-8")))
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]
    assert not errors, "CITATION.cff is not valid CFF 1.2.0:\n" + "\n".join(errors)
    bad = dict(doc, authors=[])  # the schema is strict enough to fail
    assert any(validator.iter_errors(bad)) and any(validator.iter_errors({"cff-version": "1.2.0"}))


def test_citation_is_the_package_and_the_paper() -> None:
    doc = _citation()
    assert doc["cff-version"] == "1.2.0" and doc["type"] == "software"
    assert str(doc["version"]) == dw.__version__
    released = dict(_releases())
    assert doc["date-released"] == released[dw.__version__], "the CHANGELOG's date"
    assert doc["license"] == "MIT"
    (paper,) = [r for r in doc["references"] if "Defuse" in r["title"]]
    assert paper["title"].startswith("Defuse: Harnessing Unrestricted Adversarial Examples")
    assert [a["family-names"] for a in paper["authors"]] == ["Slack", "Rauschmayr", "Kenthapadi"]
    assert paper["year"] == 2021
    assert "2102.06162" in paper["url"]
