"""Fuzzed files: saved sessions and regression suites mutated by hypothesis (the JSON manifests,
the safetensors headers and payloads, file sizes and names). Each case either loads exactly or
raises one clear error naming the directory and the file or field; never a raw library
exception, never a changed session or model, never an unpickling.

The cases run against the readers the session and ``check_suite`` use (``read_session`` and
``load_suite``); what reads without an error is then loaded into a live session, which must
either take it whole or refuse it unchanged. ``DEFUSE_FUZZ_EXAMPLES`` sets the cases per test
(default 750; four tests: 3,000 cases).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from session_fixtures import label_true_class, ready_session, state_equal, weights
from torch import nn

import defuse_widgets as dw
from defuse_widgets.persist.read import read_session
from defuse_widgets.suite.files import load_suite

EXAMPLES = int(os.environ.get("DEFUSE_FUZZ_EXAMPLES", "750"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same cases on every run: a CI failure reproduces
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, 1, -1, 2, 7, 99, 10**9])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=5,
)


@pytest.fixture(autouse=True)
def never_unpickle(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a fuzzed file was unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)


# ----- mutations -----


def mutate_json(data: st.DataObject, doc: Any) -> Any:
    """``doc`` with one value replaced, removed or added somewhere in its tree."""
    doc = copy.deepcopy(doc)
    parent: Any = None
    key: Any = None
    node = doc
    while isinstance(node, (dict, list)) and node and data.draw(st.integers(0, 3)) > 0:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = data.draw(st.sampled_from(keys))
        parent, node = node, node[key]
    op = data.draw(st.sampled_from(["replace", "delete", "add", "nudge"]))
    if parent is None:
        return data.draw(JSON) if op == "replace" else doc
    if op == "delete":
        del parent[key]
    elif op == "add" and isinstance(node, dict):
        node[data.draw(st.text(max_size=8))] = data.draw(JSON)
    elif op == "add" and isinstance(node, list):
        node.append(data.draw(JSON))
    elif op == "nudge" and isinstance(node, (int, float)) and not isinstance(node, bool):
        parent[key] = node + data.draw(st.sampled_from([-1, 1, 2**31, -(2**40)]))
    else:
        parent[key] = data.draw(JSON)
    return doc


def mutate_safetensors(data: st.DataObject, raw: bytes) -> bytes:
    """The bytes of a safetensors file with its header (dtype, shape, offsets, names, length)
    or its payload changed, or the file truncated or extended."""
    size = struct.unpack("<Q", raw[:8])[0]
    header, payload = json.loads(raw[8 : 8 + size]), raw[8 + size :]
    kind = data.draw(st.sampled_from(["header", "length", "payload", "truncate", "extend"]))
    if kind == "header":
        names = [k for k in header if k != "__metadata__"]
        name = data.draw(st.sampled_from(names))
        field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "name", "json"]))
        entry = header[name]
        if field == "dtype":
            entry["dtype"] = data.draw(
                st.sampled_from(["F16", "BF16", "I64", "U8", "BOOL", "F64", "X"])
            )
        elif field == "shape":
            entry["shape"] = data.draw(st.lists(st.integers(-2, 10**6), max_size=4))
        elif field == "data_offsets":
            entry["data_offsets"] = data.draw(
                st.lists(st.integers(-5, len(payload) + 64), min_size=0, max_size=3)
            )
        elif field == "name":
            header[data.draw(st.text(max_size=10))] = header.pop(name)
        else:
            header = mutate_json(data, header)
        text = json.dumps(header).encode()
        return struct.pack("<Q", len(text)) + text + payload
    if kind == "length":
        return struct.pack("<Q", data.draw(st.integers(0, 2**64 - 1))) + raw[8:]
    if kind == "payload" and payload:
        at = data.draw(st.integers(0, len(payload) - 1))
        flipped = bytes([payload[at] ^ data.draw(st.integers(1, 255))])
        return raw[: 8 + size + at] + flipped + raw[8 + size + at + 1 :]
    if kind == "truncate":
        return raw[: data.draw(st.integers(0, len(raw) - 1))]
    return raw + data.draw(st.binary(min_size=1, max_size=64))


def fix_entry(doc: dict[str, Any], key: str, blob: bytes) -> None:
    """Make a session manifest's entry for ``key`` match ``blob`` (as a careful forger would)."""
    if key in doc.get("files", {}):
        doc["files"][key].update(size=len(blob), sha256=hashlib.sha256(blob).hexdigest())


# ----- sessions -----


@pytest.fixture(scope="module")
def saved(
    digits: dw.ImageDataset,
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[dw.DefuseSession, Path, dict[str, bytes]]]:
    """A session with errors, regions, labels and 2 rounds, saved; and the saved files' bytes."""
    s = ready_session(digits_classifier, digits_vae, digits)
    label_true_class(s, 0)
    s.correct(steps=2, batch_size=16)
    s.correct(steps=2, batch_size=16)
    s.revert(1)
    path = s.save(tmp_path_factory.mktemp("fuzz") / "session")
    yield s, path, Files({p.name: p.read_bytes() for p in path.iterdir()})


class Files(dict):  # type: ignore[type-arg]
    """File name -> bytes, shown by its names only (hypothesis prints the fixtures it used)."""

    def __repr__(self) -> str:
        return f"Files({sorted(self)})"


def write_case(base: Path, files: dict[str, bytes]) -> Path:
    """A fresh directory holding ``files``."""
    if base.exists():
        shutil.rmtree(base)
    base.mkdir()
    for name, blob in files.items():
        (base / name).write_bytes(blob)
    return base


def signature(s: dw.DefuseSession) -> tuple[Any, ...]:
    return (s.seed, s.labels, s.active_round, s.rounds, len(s.history), id(s.errors),
            id(s.regions), len(s.relabels))  # fmt: skip


def judge(
    path: Path,
    s: dw.DefuseSession,
    original: dict[str, Any],
    classifier: nn.Module,
    latent_dim: int,
    loaded: Callable[[dict[str, Any]], None] | None = None,
) -> str:
    """Read ``path``; a clear refusal, or a state the live session takes whole or refuses
    unchanged (then put back). Returns "refused" or "loaded"."""
    before_weights = weights(classifier)
    try:
        saved = read_session(path, classifier, latent_dim, s.data)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        assert message.startswith(f"{path} is not a loadable defuse-widgets session: "), message
        assert any(k in message for k in ("field", ".safetensors", "session.json", "dataset")), (
            message
        )
        assert state_equal(weights(classifier), before_weights), "a refused read changed the model"
        return "refused"
    before, model = signature(s), weights(s.classifier)
    try:
        s.load_state_dict(saved.state)
    except (ValueError, KeyError) as exc:  # the session's own check: refused, unchanged
        assert signature(s) == before and state_equal(weights(s.classifier), model), exc
        return "refused"
    if loaded is not None:
        loaded(saved.state)
    s.load_state_dict(original)
    return "loaded"


@FUZZ
@given(data=st.data())
def test_fuzzed_session_manifests(
    saved: tuple[dw.DefuseSession, Path, dict[str, bytes]], tmp_path: Path, data: st.DataObject
) -> None:
    s, _, files = saved
    doc = json.loads(files["session.json"])
    mutated = mutate_json(data, doc)
    blob = (
        json.dumps(mutated).encode()
        if data.draw(st.booleans())
        else json.dumps(mutated, indent=1).encode()
    )
    path = write_case(tmp_path / "case", {**files, "session.json": blob})
    original = s.state_dict()
    outcome = judge(path, s, original, copy.deepcopy(s.classifier), s.generator.latent_dim)
    if json.dumps(mutated, sort_keys=True) == json.dumps(doc, sort_keys=True):  # True is not 1
        assert outcome == "loaded"


@FUZZ
@given(data=st.data())
def test_fuzzed_session_data_files(
    saved: tuple[dw.DefuseSession, Path, dict[str, bytes]], tmp_path: Path, data: st.DataObject
) -> None:
    s, _, files = saved
    doc = json.loads(files["session.json"])
    key = data.draw(st.sampled_from(sorted(doc["files"])))
    name = doc["files"][key]["name"]
    op = data.draw(st.sampled_from(["mutate", "mutate", "mutate", "delete", "rename", "pickle"]))
    new = dict(files)
    if op == "mutate":
        new[name] = mutate_safetensors(data, files[name])
    elif op == "delete":
        del new[name]
    elif op == "rename":
        new[data.draw(st.sampled_from(["x.safetensors", name.upper(), name + ".bak"]))] = new.pop(
            name
        )
    else:
        new[name] = b"\x80\x04" + files[name][:64]  # a pickle header
    if op in ("mutate", "pickle") and data.draw(st.booleans()):
        fix_entry(doc, key, new[name])  # past the checksum: the reader's own checks
    new["session.json"] = json.dumps(doc).encode()
    path = write_case(tmp_path / "case", new)
    original = s.state_dict()

    def exact(state: dict[str, Any]) -> None:  # a file that still parses must hold the same
        if new[name] == files[name]:
            assert all(state_equal(a, b) for a, b in zip(state["snapshots"], original["snapshots"]))

    judge(path, s, original, copy.deepcopy(s.classifier), s.generator.latent_dim, exact)


def test_an_untouched_save_loads_exactly(
    saved: tuple[dw.DefuseSession, Path, dict[str, bytes]], tmp_path: Path
) -> None:
    s, _, files = saved
    path = write_case(tmp_path / "case", files)
    state = read_session(path, copy.deepcopy(s.classifier), s.generator.latent_dim, s.data).state
    original = s.state_dict()
    assert [state_equal(a, b) for a, b in zip(state["snapshots"], original["snapshots"])] == [
        True
    ] * len(original["snapshots"])
    assert state["labels"] == original["labels"] and state["active_round"] == 1
    assert torch.equal(state["errors"].codes, original["errors"].codes)
    assert torch.equal(state["regions"].assignments, original["regions"].assignments)


# ----- suites -----


@pytest.fixture(scope="module")
def suite(
    saved: tuple[dw.DefuseSession, Path, dict[str, bytes]],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dw.DefuseSession, dict[str, bytes]]:
    s = saved[0]
    path = s.export_tests(tmp_path_factory.mktemp("fuzz-suite") / "suite", samples=8)
    return s, Files({p.name: p.read_bytes() for p in path.iterdir()})


def judge_suite(path: Path, data: dw.ImageDataset) -> str:
    try:
        loaded = load_suite(path, data)
    except ValueError as exc:
        message = str(exc)
        assert message.startswith(("path: ", "data: ")), message
        assert str(path) in message, message
        assert any(k in message for k in ("field", ".safetensors", "manifest.json", "dataset")), (
            message
        )
        return "refused"
    for region in loaded.regions:  # what loads is what check_suite can run
        assert region.samples.dim() == 4 and tuple(region.samples.shape[1:]) == loaded.image_shape
        assert 0 <= region.label < len(loaded.classes) and 0 <= region.min_accuracy <= 1
    return "loaded"


@FUZZ
@given(data=st.data())
def test_fuzzed_suite_manifests(
    suite: tuple[dw.DefuseSession, dict[str, bytes]], tmp_path: Path, data: st.DataObject
) -> None:
    s, files = suite
    doc = json.loads(files["manifest.json"])
    mutated = mutate_json(data, doc)
    path = write_case(tmp_path / "case", {**files, "manifest.json": json.dumps(mutated).encode()})
    outcome = judge_suite(path, s.data)
    if json.dumps(mutated, sort_keys=True) == json.dumps(doc, sort_keys=True):  # True is not 1
        assert outcome == "loaded"


@FUZZ
@given(data=st.data())
def test_fuzzed_suite_tensor_files(
    suite: tuple[dw.DefuseSession, dict[str, bytes]], tmp_path: Path, data: st.DataObject
) -> None:
    s, files = suite
    doc = json.loads(files["manifest.json"])
    i = data.draw(st.integers(0, len(doc["regions"]) - 1))
    name = doc["regions"][i]["file"]
    new = dict(files)
    op = data.draw(st.sampled_from(["mutate", "mutate", "mutate", "delete", "pickle"]))
    if op == "mutate":
        new[name] = mutate_safetensors(data, files[name])
    elif op == "delete":
        del new[name]
    else:
        new[name] = b"\x80\x04" + files[name][:64]
    if name in new and data.draw(st.booleans()):
        doc["regions"][i]["sha256"] = hashlib.sha256(new[name]).hexdigest()
    new["manifest.json"] = json.dumps(doc).encode()
    judge_suite(write_case(tmp_path / "case", new), s.data)
