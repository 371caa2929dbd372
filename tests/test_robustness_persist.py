"""Saves killed part-way, and saves that cannot be made.

Kills are real: the save runs in a forked child that gets SIGKILL, and every killed directory
must load as exactly the session before the save or exactly the one being saved.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from robustness_fixtures import Sessions, outcome
from torch import nn

import defuse_widgets as dw

TRIALS = 16
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="kills a forked saving child")


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


@needs_fork
def test_a_save_killed_at_any_moment_leaves_the_old_or_the_new_session(
    sessions: Sessions,
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
    sessions: Sessions,
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
    sessions: Sessions,
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


# ----- saves that cannot be made -----


def test_save_to_an_existing_file_is_refused(sessions: Sessions, tmp_path: Path) -> None:
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
    sessions: Sessions,
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
    sessions: Sessions,
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
    from defuse_widgets.utils import atomic

    s, pristine, old, _ = sessions
    path = Path(shutil.copytree(pristine, tmp_path / "refusing"))
    before = sorted(os.listdir(path))
    real, written = atomic.write_durable, []

    def refusing(file: Path, data: bytes) -> dict[str, Any]:
        if written:
            raise OSError(errno, why, str(file)) if errno != 13 else PermissionError(errno, why)
        written.append(file)
        return real(file, data)

    monkeypatch.setattr("defuse_widgets.persist.write.write_durable", refusing)
    with pytest.raises(raised, match=f"path: expected a writable directory, got .*{why}"):
        s.save(path)
    assert sorted(os.listdir(path)) == before, "the refused save left files behind"
    assert outcome(path, old, old, digits_classifier, digits_vae) == ("old", False)


def test_a_directory_without_write_access_is_refused_before_any_work(
    sessions: Sessions,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Simulated: ``os.access`` says the directory is not writable (what it says to a non-root
    user of a chmod 555 directory); the save is refused before any file is written."""
    s, pristine, _, _ = sessions
    path = Path(shutil.copytree(pristine, tmp_path / "noaccess"))
    before = sorted(os.listdir(path))
    monkeypatch.setattr("defuse_widgets.persist.write.os.access", lambda *a, **k: False)
    monkeypatch.setattr(
        "defuse_widgets.persist.write.encode", lambda *a: pytest.fail("work started")
    )
    with pytest.raises(PermissionError, match="writable directory, got .*Permission denied"):
        s.save(path)
    assert sorted(os.listdir(path)) == before
