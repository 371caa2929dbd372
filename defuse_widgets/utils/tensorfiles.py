"""Reading safetensors bytes safely: the header is sniffed first, so a pickle or a zip archive
given a ``.safetensors`` name is named for what it is and never unpickled or executed."""

from __future__ import annotations

import torch
from safetensors.torch import load


def not_safetensors(data: bytes) -> str | None:
    """Why ``data`` cannot be a safetensors file (None when its header looks right).

    A safetensors file starts with the 8-byte little-endian length of a JSON header that opens
    with ``{``; a pickle starts with ``0x80`` and ``torch.save`` writes a zip archive (``PK``).
    """
    if len(data) >= 9:
        size = int.from_bytes(data[:8], "little")
        if 8 + size <= len(data) and data[8:9] == b"{":
            return None
    if data[:2] == b"PK":
        looks = "it is a zip archive, the format of torch.save"
    elif data[:1] == b"\x80":
        looks = "it is a Python pickle"
    else:
        looks = "it has no safetensors header"
    return f"is not a safetensors file ({looks}); it was not unpickled or executed"


def parse_safetensors(data: bytes) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """The tensors of safetensors bytes, or None and why they cannot be read.

    Returns
    -------
    (tensors, None) for a good file; (None, reason) otherwise, the reason starting with a verb
    ("is not a safetensors file (...)", "is damaged (...)") to follow the file's name.
    """
    why = not_safetensors(data)
    if why is not None:
        return None, why
    try:
        return load(data), None
    except Exception as exc:  # safetensors raises its own error types, and torch may too
        return None, f"is damaged ({type(exc).__name__}: {exc})"
