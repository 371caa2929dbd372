"""Is a Ray cluster answering at an address? A socket-level probe that cannot hang (no ray import).

``ray.init(address=...)`` waits more than a minute when the address accepts TCP but is not a Ray
server, and a long time when nothing answers; this probe gives a clear error within a timeout.
Ray's head (GCS, ``host:6379``) and its client server (``ray://host:10001``) speak gRPC over
HTTP/2 in clear text: sent HTTP/2's connection preface, a gRPC server answers with a SETTINGS
frame.
"""

from __future__ import annotations

import os
import socket

# HTTP/2 client connection preface, then an empty SETTINGS frame (RFC 9113, 3.4 and 6.5)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
SETTINGS = 4


def check_reachable(address: str, timeout_s: float) -> None:
    """Raise ConnectionError unless a gRPC (Ray) server answers at ``address`` within ``timeout_s``.

    Parameters
    ----------
    address : str
        ``"host:port"`` or ``"ray://host:port"``; ``"auto"`` and addresses without a port are
        left to Ray. With ``RAY_USE_TLS`` set only the TCP connection is checked.
    timeout_s : float
        Seconds to wait for the connection and for the answer.
    """
    target = address.split("://", 1)[-1]
    if target == "auto" or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    hint = "check the address (`ray status` on the head node), or pass address=None for a local one"
    try:
        conn = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s)
    except (OSError, ValueError) as exc:
        raise ConnectionError(
            f"address: expected a reachable Ray cluster at {address!r}, got {exc} within "
            f"{timeout_s:g} s; {hint}"
        ) from None
    with conn:
        if os.environ.get("RAY_USE_TLS", "0") not in ("0", ""):
            return
        try:
            conn.settimeout(timeout_s)
            conn.sendall(PREFACE)
            header = _read(conn, 9)
        except OSError:  # connected, but no answer (timeout) or a reset
            header = b""
    if len(header) < 9 or header[3] != SETTINGS:
        raise ConnectionError(
            f"address: expected a Ray cluster at {address!r}, got a server that does not speak "
            f"gRPC (no HTTP/2 answer within {timeout_s:g} s); {hint}"
        )


def _read(conn: socket.socket, size: int) -> bytes:
    """Up to ``size`` bytes, fewer if the peer closes; TimeoutError past the socket's timeout."""
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data
