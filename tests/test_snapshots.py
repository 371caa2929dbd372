"""Weight snapshots with bounded memory: spilled to disk beyond a bound, read back bit for bit,
written atomically (a killed writer leaves no partial snapshot), removed on close or with the
store, and reported by the session."""

from __future__ import annotations

import copy
import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from session_fixtures import label_true_class, ready_session, state_equal, weights
from torch import nn

import defuse_widgets as dw
from defuse_widgets.correction.snapshots import PREFIX, SnapshotStore, state_bytes, sweep_orphans
from defuse_widgets.utils.tensorfiles import parse_safetensors

TINY = {"steps": 2, "batch_size": 16}


def odd_state(seed: int) -> dict[str, torch.Tensor]:
    """A state dict with bit patterns a lossy copy would change: NaN payloads, -0.0, bf16."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(7, 5, generator=g)
    w[0, 0], w[0, 1] = -0.0, float("nan")
    bits = torch.randint(-(2**31), 2**31 - 1, (9,), generator=g, dtype=torch.int64)
    raw = bits.to(torch.int32).view(torch.float32)  # arbitrary float32 bit patterns
    return {"w": w, "raw": raw, "half": torch.randn(3, generator=g).bfloat16(),
            "steps": torch.tensor(seed)}  # fmt: skip


def same_bits(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype
        and a[k].shape == b[k].shape
        and a[k].reshape(-1).view(torch.uint8).equal(b[k].reshape(-1).view(torch.uint8))
        for k in a
    )


def test_the_store_spills_beyond_its_bound_and_reads_back_bit_for_bit(tmp_path: Path) -> None:
    states = [odd_state(i) for i in range(6)]
    store = SnapshotStore(states, max_in_memory=2, parent=tmp_path)
    report = store.report()
    assert (report.snapshots, report.in_memory, report.on_disk) == (6, 2, 4)
    assert report.in_memory_bytes == 2 * state_bytes(states[0])
    assert report.folder is not None and Path(report.folder).parent == tmp_path
    assert store[0] is states[0] and store[-1] is states[5], "original and newest stay in memory"
    for i, state in enumerate(states):
        assert same_bits(store[i], state), i
    assert [same_bits(a, b) for a, b in zip(store, states)] == [True] * 6
    files = sorted(p.name for p in Path(report.folder).iterdir())
    assert files == [f"round-{i}.safetensors" for i in range(1, 5)], "no temporary file left"
    with pytest.raises(IndexError, match="round 6 out of range for 6"):
        store[6]


def test_a_byte_bound_spills_too_and_bounds_are_checked(tmp_path: Path) -> None:
    size = state_bytes(odd_state(0))
    store = SnapshotStore([odd_state(i) for i in range(5)], max_in_memory=None,
                          max_bytes=2 * size, parent=tmp_path)  # fmt: skip
    assert store.report().in_memory == 2 and store.report().on_disk == 3
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_in_memory: expected None or a positive integer"):
            store.configure(max_in_memory=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="parent: expected an existing folder"):
        store.configure(parent=tmp_path / "absent")
    assert store.report().in_memory == 2, "a refused setting changed nothing"


def test_the_folder_goes_on_close_and_with_the_store(tmp_path: Path) -> None:
    store = SnapshotStore([odd_state(i) for i in range(4)], max_in_memory=1, parent=tmp_path)
    folder = store.folder
    assert folder is not None and folder.is_dir()
    store.close()
    assert not folder.exists() and store.folder is None
    with pytest.raises(RuntimeError, match="spilled to disk and the store was closed"):
        store[1]
    assert same_bits(store[3], odd_state(3)), "what stayed in memory is still there"
    other = SnapshotStore([odd_state(i) for i in range(4)], max_in_memory=1, parent=tmp_path)
    folder = other.folder
    assert folder is not None and folder.is_dir()
    del other
    gc.collect()
    assert not folder.exists(), "a store that is garbage-collected removes its folder"


def test_a_spilled_file_changed_on_disk_is_refused(tmp_path: Path) -> None:
    store = SnapshotStore([odd_state(i) for i in range(3)], max_in_memory=2, parent=tmp_path)
    assert store.folder is not None
    file = store.folder / "round-1.safetensors"
    file.write_bytes(file.read_bytes()[:-1] + b"\x00")
    with pytest.raises(RuntimeError, match="round-1.safetensors was changed on disk"):
        store[1]


WRITER = textwrap.dedent(
    """
    import sys, torch
    from defuse_widgets.correction.snapshots import SnapshotStore
    big = {"w": torch.arange(16_000_000, dtype=torch.float32)}  # 64 MB per snapshot
    store = SnapshotStore([big], max_in_memory=1, parent=sys.argv[1])
    print("ready", flush=True)
    for i in range(1, 1000):
        store.append({"w": big["w"] + i})
    """
)


def test_a_killed_writer_leaves_no_partial_snapshot(tmp_path: Path) -> None:
    """SIGKILL while a snapshot is being written: every snapshot file is whole; the dead
    process's folder (with its temporary file) goes when the next store is made there."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # kill while a temporary file is being written
            if any(p.name.endswith(".tmp") for p in tmp_path.glob(f"{PREFIX}*/*")):
                break
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    (folder,) = tmp_path.glob(f"{PREFIX}*")
    finished = sorted(folder.glob("round-*.safetensors"))
    for file in finished:
        tensors, why = parse_safetensors(file.read_bytes())
        assert tensors is not None, (file.name, why)
        i = int(file.name.split("-")[1].split(".")[0])
        assert torch.equal(tensors["w"], torch.arange(16_000_000, dtype=torch.float32) + i)
    assert sweep_orphans(tmp_path) == [folder.name]
    assert not folder.exists()


def test_a_session_reverts_to_a_spilled_round_bit_for_bit(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module, tmp_path: Path
) -> None:
    s = ready_session(digits_classifier, digits_vae, digits)
    s.limit_snapshots(in_memory=2, folder=tmp_path)
    label_true_class(s, 0)
    seen = [weights(s.classifier)]
    for _ in range(4):
        s.correct(**TINY)
        seen.append(weights(s.classifier))
    report = s.memory_report()
    assert (report.snapshots, report.in_memory, report.on_disk) == (5, 2, 3)
    assert report.on_disk_bytes > 0 and report.folder is not None
    for target in (1, 2, 3, 0, 4):
        s.revert(target)
        assert state_equal(weights(s.classifier), seen[target]), target
    s.revert(2)
    saved = s.save(tmp_path / "saved")
    s2 = dw.DefuseSession.load(saved, classifier=copy.deepcopy(digits_classifier),
                               generator=digits_vae, data=digits)  # fmt: skip
    assert state_equal(weights(s2.classifier), seen[2]) and s2.rounds == 4
    folder = Path(report.folder)
    s.close()
    assert not folder.exists()
    with pytest.raises(RuntimeError, match="spilled to disk and the store was closed"):
        s.revert(1)
    assert state_equal(weights(s.classifier), seen[2]), "a refused revert changed the model"
