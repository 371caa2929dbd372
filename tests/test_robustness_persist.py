"""Saves killed part-way, loads of edited or forged directories, and saves that cannot be made.

Kills are real: the save runs in a forked child that gets SIGKILL, and every killed directory
must load as exactly the session before the save or exactly the one being saved.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import select
import shutil
import signal
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from session_fixtures import label_true_class, ready_session, state_equal, weights
from torch import nn

import defuse_widgets as dw

TINY = {"steps": 2, "batch_size": 16}
TRIALS = 16
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="kills a forked saving child")


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


@pytest.fixture(scope="module")
def sessions(
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
    digits: dw.ImageDataset,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dw.DefuseSession, Path, tuple[Any, ...], tuple[Any, ...]]:
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


def save_in_child(
    s: dw.DefuseSession, path: Path, prepare: Callable[[], None] | None
) -> tuple[int, int]:
    """Fork a child that saves ``s`` to ``path``; returns its pid, once it is about to save, and
    a pipe that gets one byte when the save has returned."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read)
            if prepare is not None:
                prepare()
            os.write(write, b"s")
            s.save(path)
            os.write(write, b"d")
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    assert os.read(read, 1) == b"s", "the saving child failed to start"
    return pid, read


def finish(pid: int, pipe: int) -> int:
    """Reap the child; returns its wait status."""
    os.close(pipe)
    return os.waitpid(pid, 0)[1]


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


@needs_fork
def test_a_save_killed_at_any_moment_leaves_the_old_or_the_new_session(
    sessions: tuple[dw.DefuseSession, Path, tuple, tuple],
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
    tmp_path: Path,
) -> None:
    s, pristine, old, new = sessions
    times = []
    for i in range(3):  # a child's save, timed as the kills are: from its start signal
        pid, pipe = save_in_child(s, Path(shutil.copytree(pristine, tmp_path / f"t{i}")), None)
        start = time.perf_counter()
        assert os.read(pipe, 1) == b"d"
        times.append(time.perf_counter() - start)
        finish(pid, pipe)
    duration = statistics.median(times)
    results: list[tuple[float, str, bool, bool]] = []
    for attempt in range(3):  # more, finer trials if the first ones all missed the save
        for i in range(TRIALS):
            delay = 2.5 * duration * i / (TRIALS - 1) / (attempt + 1)
            path = Path(shutil.copytree(pristine, tmp_path / f"trial{attempt}-{i}"))
            pid, pipe = save_in_child(s, path, None)
            time.sleep(delay)
            os.kill(pid, signal.SIGKILL)
            done = bool(select.select([pipe], [], [], 0)[0])
            status = finish(pid, pipe)
            result, warned = outcome(path, old, new, digits_classifier, digits_vae)
            results.append((delay, result, warned, os.WIFSIGNALED(status) and not done))
        if any(warned or (result == "new" and cut) for _, result, warned, cut in results):
            break
    summary = [(f"{d * 1e3:.1f} ms", r[:60], w, c) for d, r, w, c in results]
    print(f"save {duration * 1e3:.1f} ms; (delay, outcome, left-overs, cut short): {summary}")
    assert all(r[1] in ("old", "new") for r in results), summary
    assert any(r[1] == "old" and r[3] for r in results), summary
    assert any(r[2] or (r[1] == "new" and r[3]) for r in results), "no kill landed mid-save"
    # a later save removes what the killed ones left behind
    s.save(path)
    assert outcome(path, old, new, digits_classifier, digits_vae) == ("new", False)


@needs_fork
def test_a_save_killed_at_every_file_operation(
    sessions: tuple[dw.DefuseSession, Path, tuple, tuple],
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGKILL just before each fsync, rename and unlink of a save, the switch included."""
    s, pristine, old, new = sessions
    names = ("fsync", "replace", "unlink")
    calls: list[str] = []

    def counted(name: str, real: Callable) -> Callable:
        return lambda *a, **k: (calls.append(name), real(*a, **k))[1]

    with monkeypatch.context() as m:
        for name in names:
            m.setattr(os, name, counted(name, getattr(os, name)))
        s.save(Path(shutil.copytree(pristine, tmp_path / "count")))
    assert "replace" in calls, f"a save that never renames cannot switch atomically: {calls}"

    def kill_before(k: int) -> Callable[[], None]:
        def prepare() -> None:
            count = iter(range(len(calls) + 1))
            for name in names:
                real = getattr(os, name)

                def wrapped(*a: Any, _f: Callable = real, **kw: Any) -> Any:
                    if next(count) == k:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return _f(*a, **kw)

                setattr(os, name, wrapped)

        return prepare

    seen = []
    for k in range(len(calls)):
        path = Path(shutil.copytree(pristine, tmp_path / f"kill{k}"))
        status = finish(*save_in_child(s, path, kill_before(k)))
        assert os.WIFSIGNALED(status), f"the child was not killed before {calls[k]} #{k}"
        seen.append((calls[k], outcome(path, old, new, digits_classifier, digits_vae)))
    assert all(result in ("old", "new") for _, (result, _) in seen), seen
    switch = calls.index("replace")
    assert all(result == "old" for _, (result, _) in seen[: switch + 1]), seen
    assert all(result == "new" for _, (result, _) in seen[switch + 1 :]), seen
    assert seen[0][1] == ("old", True), "a half-written save is named in a warning"


def test_a_version_1_save_still_loads(
    sessions: tuple[dw.DefuseSession, Path, tuple, tuple],
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
    tmp_path: Path,
) -> None:
    """A directory as the first release wrote it: fixed file names, no manifest entries."""
    _, pristine, old, _ = sessions
    path = Path(shutil.copytree(pristine, tmp_path / "v1"))
    doc = json.loads((path / "session.json").read_text())
    for key, entry in doc.pop("files").items():
        (path / entry["name"]).rename(path / f"{key}.safetensors")
    doc["version"] = 1
    doc.pop("saved_at")
    (path / "session.json").write_text(json.dumps(doc))
    assert outcome(path, old, old, digits_classifier, digits_vae) == ("old", False)


# ----- loads refused before anything changes -----


def data_file(path: Path, key: str) -> Path:
    """The data file ``key`` of a saved directory (by its manifest, or a version 1 name)."""
    files = json.loads((path / "session.json").read_text()).get("files")
    return path / (files[key]["name"] if files else f"{key}.safetensors")


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
    sessions: tuple[dw.DefuseSession, Path, tuple, tuple],
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
    sessions: tuple[dw.DefuseSession, Path, tuple, tuple],
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
    sessions: tuple[dw.DefuseSession, Path, tuple, tuple],
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
    sessions: tuple[dw.DefuseSession, Path, tuple, tuple],
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


# ----- saves that cannot be made -----


def test_save_to_an_existing_file_is_refused(
    sessions: tuple[dw.DefuseSession, Path, tuple, tuple], tmp_path: Path
) -> None:
    s = sessions[0]
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    with pytest.raises(ValueError, match="path: expected a directory .*got the existing file"):
        s.save(file)
    with pytest.raises(ValueError, match="path: expected a directory path, .*parent is a file"):
        s.save(file / "session")
    assert file.read_text() == "mine"


def is_root_like(directory: Path) -> bool:
    """Whether this user can write into a directory without write permission (root can)."""
    directory.chmod(0o555)
    try:
        (directory / "probe").write_text("")
    except PermissionError:
        return False
    finally:
        directory.chmod(0o755)
    (directory / "probe").unlink()
    return True


def test_save_to_a_read_only_directory_is_refused(
    sessions: tuple[dw.DefuseSession, Path, tuple, tuple],
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
    tmp_path: Path,
) -> None:
    """A real chmod 555 directory; skipped for a user whom permissions do not stop (root)."""
    s, pristine, old, _ = sessions
    path = Path(shutil.copytree(pristine, tmp_path / "readonly"))
    if is_root_like(path):
        pytest.skip("this user ignores directory permissions (root); see the simulated test")
    path.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="path: expected a writable directory"):
            s.save(path)
    finally:
        path.chmod(0o755)
    assert outcome(path, old, old, digits_classifier, digits_vae) == ("old", False)


@pytest.mark.parametrize(
    ("errno", "why", "raised"),
    [(13, "Permission denied", PermissionError), (30, "Read-only file system", OSError)],
)
def test_a_write_the_os_refuses_is_reported_and_the_old_save_kept(
    sessions: tuple[dw.DefuseSession, Path, tuple, tuple],
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    errno: int,
    why: str,
    raised: type[OSError],
) -> None:
    """Simulated: the OS refuses the save's second file (as a permission or a read-only mount
    would, for any user); checks the message, the earlier save and that nothing is left over."""
    from defuse_widgets import atomic

    s, pristine, old, _ = sessions
    path = Path(shutil.copytree(pristine, tmp_path / "refusing"))
    before = sorted(os.listdir(path))
    real, written = atomic.write_durable, []

    def refusing(file: Path, data: bytes) -> dict[str, Any]:
        if written:
            raise OSError(errno, why, str(file)) if errno != 13 else PermissionError(errno, why)
        written.append(file)
        return real(file, data)

    monkeypatch.setattr("defuse_widgets.persist.write_durable", refusing)
    with pytest.raises(raised, match=f"path: expected a writable directory, got .*{why}"):
        s.save(path)
    assert sorted(os.listdir(path)) == before, "the refused save left files behind"
    assert outcome(path, old, old, digits_classifier, digits_vae) == ("old", False)
