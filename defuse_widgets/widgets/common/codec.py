"""Binary array codec for widget traits: numpy array <-> {"buffer", "dtype", "shape"}.

ipywidgets sends any ``memoryview``/``bytes`` found inside a trait value as a binary buffer, so
arrays travel as raw bytes (never JSON lists of floats). The JS side reads them with
a DataView over ``value.buffer`` (see ``js/common/codec.ts``).
Use as ``Dict(allow_none=True).tag(sync=True, **array_serialization)`` for a trait, or
:func:`array_to_json` directly for a custom message (pop ``"buffer"`` into its buffers).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# dtypes a JS TypedArray can view directly
JS_DTYPES = ("float32", "float64", "int8", "int16", "int32", "uint8", "uint16", "uint32")


def array_to_json(value: Any, widget: Any = None) -> dict[str, Any] | None:
    """Serialize an array (numpy, torch or nested list) to ``{"buffer", "dtype", "shape"}``."""
    if value is None:
        return None
    if isinstance(value, dict) and "buffer" in value:
        return value
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype == np.int64:
        arr = arr.astype(np.int32)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    if arr.dtype.name not in JS_DTYPES:
        raise TypeError(
            f"array dtype {arr.dtype} cannot be sent to the browser; use one of {JS_DTYPES}"
        )
    arr = np.ascontiguousarray(arr)
    return {
        "buffer": arr.reshape(-1).data.cast("B"),
        "dtype": arr.dtype.name,
        "shape": list(arr.shape),
    }


def array_from_json(value: Any, widget: Any = None) -> np.ndarray | None:
    """Deserialize ``{"buffer", "dtype", "shape"}`` (from JS or from :func:`array_to_json`)."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return value
    buf = value["buffer"]
    arr = np.frombuffer(
        bytes(buf) if not isinstance(buf, (bytes, memoryview)) else buf, dtype=value["dtype"]
    )
    return arr.reshape(value["shape"]).copy()


array_serialization = {"to_json": array_to_json, "from_json": array_from_json}

__all__ = ["array_serialization", "array_to_json", "array_from_json"]
