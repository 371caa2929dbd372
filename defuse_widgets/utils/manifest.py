"""Reading the JSON manifest of a saved directory (a session or a regression suite), checked.

One reader for every directory format the package writes: the manifest must exist, be JSON
holding a mapping, declare the expected ``format`` and a ``version`` this release reads. The
caller turns :class:`ManifestError` into its own message (a session "is not a loadable
defuse-widgets session", a suite "export it again").
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any


class ManifestError(ValueError):
    """A manifest that is missing, not JSON, of another format or of a version not read here.

    ``why`` is the reason alone (e.g. "session.json is missing"), for the caller's message.
    """

    def __init__(self, directory: Path, why: str):
        super().__init__(f"{directory}: {why}")
        self.directory, self.why = directory, why


def read_manifest(
    directory: Path, name: str, format: str, versions: Collection[int]
) -> dict[str, Any]:
    """The manifest ``directory / name``, its ``format`` and ``version`` checked.

    Parameters
    ----------
    directory : the saved directory.
    name : the manifest's file name, e.g. ``"session.json"``.
    format : the value its ``format`` field must hold.
    versions : the format versions this release reads.

    Returns
    -------
    dict
        The parsed manifest.

    Raises
    ------
    ManifestError
        Naming the file and what is wrong with it; nothing else is read.
    """
    if not directory.is_dir():
        raise ManifestError(directory, "no such directory")
    try:
        doc = json.loads((directory / name).read_bytes())
    except FileNotFoundError as exc:
        raise ManifestError(directory, f"{name} is missing") from exc
    except IsADirectoryError as exc:
        raise ManifestError(directory, f"{name} is a directory, not a file") from exc
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ManifestError(directory, f"{name} is not valid JSON ({exc})") from exc
    except OSError as exc:
        raise ManifestError(directory, f"{name} is unreadable ({exc.strerror or exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != format:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        shown = repr(got) if len(repr(got)) <= 40 else repr(got)[:37] + "..."
        raise ManifestError(
            directory, f"{name} does not declare format {format!r} (field 'format': {shown})"
        )
    version = doc.get("version")
    if isinstance(version, bool) or version not in versions:
        shown = repr(version) if len(repr(version)) <= 40 else repr(version)[:37] + "..."
        raise ManifestError(
            directory,
            f"{name} has format version {shown} (field 'version'); this release reads versions "
            f"{', '.join(map(str, sorted(versions)))}",
        )
    return doc
