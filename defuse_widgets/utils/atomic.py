"""Kill-safe directory writes: new files beside the old ones, then one atomic manifest switch.

A save writes each data file under a generation-unique name, flushes it to disk, and only then
replaces the manifest with ``os.replace`` (the one operation a local disk and a network file
system both make atomic). Until that rename the old manifest names only old files; after it the
new manifest names only new files, so a save killed at any point leaves the complete old or the
complete new set. Files that no manifest names are left-overs of an interrupted save.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from pathlib import Path
from typing import Any

GENERATION = re.compile(r"^[0-9a-f]{12}$")
LEFTOVER = re.compile(
    r"^(?:(?:weights|errors|regions)(?:\.[0-9a-f]{12})?\.safetensors|\.session\.json\.[0-9a-f]{12}\.tmp)$"
)


def new_generation() -> str:
    """A fresh 12-hex-digit token that names one save's files."""
    return secrets.token_hex(6)


def fsync_directory(directory: Path) -> None:
    """Flush a directory's entries (new names, renames) to disk where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows cannot open a directory; its renames are durable on return
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_durable(file: Path, data: bytes) -> dict[str, Any]:
    """Write ``data`` to the new file ``file`` and flush it to disk.

    Returns
    -------
    dict with the file's ``name``, ``size`` (bytes) and ``sha256`` (hex), for a manifest.
    """
    with open(file, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return {"name": file.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def switch(directory: Path, name: str, text: str, generation: str) -> None:
    """Atomically replace ``directory / name`` with ``text`` (written and flushed first)."""
    tmp = directory / f".{name}.{generation}.tmp"
    write_durable(tmp, text.encode())
    os.replace(tmp, directory / name)
    fsync_directory(directory)


def check_entry(entry: dict[str, Any], data: bytes) -> str | None:
    """Why ``data`` is not the file a manifest ``entry`` names (None when it is)."""
    if len(data) != entry["size"]:
        return f"it has {len(data)} bytes, the manifest says {entry['size']}"
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        return "its sha256 checksum differs from the manifest's"
    return None


def leftovers(directory: Path, keep: set[str]) -> list[str]:
    """Names in ``directory`` that look like a save's files but are not in ``keep``, sorted."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(n for n in names if LEFTOVER.match(n) and n not in keep)


def remove(directory: Path, names: list[str]) -> None:
    """Delete ``names`` from ``directory``, ignoring files that are already gone or locked."""
    for name in names:
        with contextlib.suppress(OSError):
            os.unlink(directory / name)
