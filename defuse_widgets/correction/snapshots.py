"""Weight snapshots with bounded memory: the newest stay in memory, older ones spill to disk.

A session keeps one exact copy of the classifier's weights per round, so that ``revert`` can
restore any of them bit for bit. For a 100 MB model, 30 rounds would hold 3 GB; a
:class:`SnapshotStore` keeps at most ``max_in_memory`` snapshots (and at most ``max_bytes`` of
them) in memory and writes the others to a folder of its own as safetensors files, each written
atomically (a temporary file, flushed, then renamed), so a killed process never leaves a
partial snapshot under a snapshot's name. A spilled snapshot is read back (its SHA-256 checked)
when it is asked for. The folder is removed by :meth:`SnapshotStore.close`, when the store is
garbage-collected, or at interpreter exit; folders left by a killed process are removed by the
next store made in the same parent folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save

from defuse_widgets.utils.atomic import fsync_directory, new_generation, write_durable
from defuse_widgets.utils.checks import Constraints, Interval, validate_params
from defuse_widgets.utils.tensorfiles import parse_safetensors

DEFAULT_IN_MEMORY = 8
"""Snapshots kept in memory by default (the original weights and the newest rounds)."""
DEFAULT_MAX_BYTES = 1 << 30
"""Bytes of snapshots kept in memory by default (1 GiB)."""
PREFIX = "defuse-snapshots-"
CONSTRAINTS: Constraints = {
    "max_in_memory": [None, Interval(int, 1, None)],
    "max_bytes": [None, Interval(int, 0, None)],
}
"""The declared checks of the store's bounds."""

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SnapshotReport:
    """What a :class:`SnapshotStore` holds: counts and bytes in memory and on disk.

    ``folder`` is the spill folder (None until the first snapshot spills).
    """

    snapshots: int
    in_memory: int
    in_memory_bytes: int
    on_disk: int
    on_disk_bytes: int
    folder: str | None


def state_bytes(state: State) -> int:
    """Bytes of the tensors of a state dict."""
    return sum(t.numel() * t.element_size() for t in state.values())


def _remove_folder(folder: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # another user's process, or no kill on this platform
        return True
    return True


def sweep_orphans(parent: Path) -> list[str]:
    """Remove the spill folders in ``parent`` of processes that no longer run; their names."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            pid = entry.name[len(PREFIX) :].partition("-")[0]
            if entry.name.startswith(PREFIX) and pid.isdecimal() and not _alive(int(pid)):
                _remove_folder(entry.path)
                removed.append(entry.name)
    return removed


class SnapshotStore:
    """A list of classifier state dicts (index = round) with bounded memory.

    Parameters
    ----------
    snapshots : the state dicts to start with (tensors on the CPU; they are kept as given).
    max_in_memory : at most this many snapshots stay in memory (at least 1); None: no bound.
    max_bytes : at most this many bytes of snapshots stay in memory (the newest snapshot always
        does); None: no bound.
    parent : the folder the spill folder is made in (default: the system's temporary folder).

    Notes
    -----
    The original weights (index 0) and the newest snapshots stay in memory; the oldest of the
    others spill first. Reading a spilled snapshot reads its file each time (nothing grows).
    ``store[i]`` returns the snapshot itself for one in memory: treat it as read-only.
    """

    def __init__(
        self,
        snapshots: Iterable[State] = (),
        *,
        max_in_memory: int | None = DEFAULT_IN_MEMORY,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        parent: str | os.PathLike | None = None,
    ):
        self._memory: dict[int, State] = {}
        self._disk: dict[int, tuple[str, int, str]] = {}  # index -> (file name, bytes, sha256)
        self._count = 0
        self._folder: Path | None = None
        self._finalizer: weakref.finalize | None = None
        self._closed = False
        self._warned = False
        self.parent: Path = Path(tempfile.gettempdir())
        self.configure(max_in_memory, max_bytes, parent)
        for state in snapshots:
            self.append(state)

    # ----- settings -----

    def configure(
        self,
        max_in_memory: int | None = DEFAULT_IN_MEMORY,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        parent: str | os.PathLike | None = None,
    ) -> None:
        """Set the bounds (checked first) and spill what they no longer allow."""
        validate_params(CONSTRAINTS, max_in_memory=max_in_memory, max_bytes=max_bytes)
        if parent is not None and not Path(parent).is_dir():
            raise ValueError(f"parent: expected an existing folder, got {parent!r}")
        if parent is not None and self._disk and Path(parent) != self.parent:
            raise ValueError(
                "parent: snapshots have already spilled to "
                f"{self._folder}; set the folder before the first spill"
            )
        self.max_in_memory, self.max_bytes = max_in_memory, max_bytes
        self.parent = Path(parent) if parent is not None else Path(tempfile.gettempdir())
        self._spill()

    # ----- the list interface the session uses -----

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[State]:
        for i in range(self._count):
            yield self[i]

    def __getitem__(self, index: int) -> State:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"index: expected a round number, got {index!r}")
        i = index + self._count if index < 0 else index
        if not 0 <= i < self._count:
            raise IndexError(f"index: round {index} out of range for {self._count} snapshots")
        if i in self._memory:
            return self._memory[i]
        return self._read(i)

    def append(self, state: State) -> None:
        """Add the next round's snapshot, then spill what the bounds no longer allow.

        A spill that fails (a full disk, say) keeps the snapshot in memory and warns once."""
        self._memory[self._count] = state
        self._count += 1
        self._spill()

    # ----- what it holds -----

    @property
    def folder(self) -> Path | None:
        """The spill folder (None until the first spill, and after :meth:`close`)."""
        return self._folder

    def report(self) -> SnapshotReport:
        """Counts and bytes in memory and on disk."""
        return SnapshotReport(
            snapshots=self._count,
            in_memory=len(self._memory),
            in_memory_bytes=sum(state_bytes(s) for s in self._memory.values()),
            on_disk=len(self._disk),
            on_disk_bytes=sum(size for _, size, _ in self._disk.values()),
            folder=None if self._folder is None else str(self._folder),
        )

    def close(self) -> None:
        """Remove the spill folder; the spilled snapshots are gone (reading one then raises)."""
        self._closed = True
        if self._finalizer is not None:
            self._finalizer()
        self._folder = None

    # ----- spilling -----

    def _over(self) -> bool:
        if self.max_in_memory is not None and len(self._memory) > self.max_in_memory:
            return True
        if self.max_bytes is None or len(self._memory) <= 1:
            return False
        return sum(state_bytes(s) for s in self._memory.values()) > self.max_bytes

    def _victim(self) -> int | None:
        """The oldest snapshot in memory besides the original and the newest."""
        candidates = [i for i in sorted(self._memory) if i not in (0, self._count - 1)]
        if not candidates and len(self._memory) > 1 and 0 in self._memory:
            candidates = [0]  # a bound of 1: the original spills too, the newest stays
        return candidates[0] if candidates else None

    def _spill(self) -> None:
        while self._over() and not self._closed:
            victim = self._victim()
            if victim is None:
                return
            try:
                self._write(victim)
            except OSError as exc:
                if not self._warned:
                    warnings.warn(
                        f"weight snapshots could not spill to {self.parent} ({exc}); they stay "
                        "in memory",
                        stacklevel=3,
                    )
                    self._warned = True
                return
            del self._memory[victim]

    def _ensure_folder(self) -> Path:
        if self._folder is None:
            sweep_orphans(self.parent)
            folder = self.parent / f"{PREFIX}{os.getpid()}-{new_generation()}"
            folder.mkdir()
            self._folder = folder
            self._finalizer = weakref.finalize(self, _remove_folder, str(folder))
        return self._folder

    def _write(self, index: int) -> None:
        """Write snapshot ``index`` atomically: a temporary file, flushed, then renamed."""
        folder = self._ensure_folder()
        data = save({k: v.contiguous() for k, v in self._memory[index].items()})
        name = f"round-{index}.safetensors"
        tmp = folder / f".{name}.{new_generation()}.tmp"
        try:
            write_durable(tmp, data)
            os.replace(tmp, folder / name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_directory(folder)
        self._disk[index] = (name, len(data), hashlib.sha256(data).hexdigest())

    def _read(self, index: int) -> State:
        name, size, digest = self._disk[index]
        if self._closed or self._folder is None:
            raise RuntimeError(
                f"snapshot {index} was spilled to disk and the store was closed; it is gone"
            )
        file = self._folder / name
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise RuntimeError(
                f"snapshot {index}: its spilled file {file} is unreadable ({exc.strerror or exc})"
            ) from exc
        if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
            raise RuntimeError(f"snapshot {index}: its spilled file {file} was changed on disk")
        state, why = parse_safetensors(data)
        if state is None:
            raise RuntimeError(f"snapshot {index}: its spilled file {file} {why}")
        return state
