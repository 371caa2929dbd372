"""A Jupyter server extension that takes two needless delays out of every widget round trip.

1. **TCP_NODELAY on kernel websockets.** jupyter_server leaves Nagle's algorithm on. The kernel
   answers each browser message with several small iopub messages (``busy``, the reply,
   ``idle``); with Nagle on, the server holds every write after the first until the browser
   acknowledges the first, and the browser delays that acknowledgement by up to 40 ms. Measured
   through a JupyterLab server on loopback: a request -> frame round trip took 48 ms (p50)
   without this and 6 ms with it (3.8 ms straight to the kernel over ZMQ).
2. **Cacheable favicons.** JupyterLab swaps the page's favicon on every kernel ``busy`` and
   ``idle``, and the server sends the favicons with ``Cache-Control: no-cache``, so each swap is
   an HTTP request to the server. While a slider drives the kernel at 60 requests a second, that
   is 120 favicon requests a second competing with the kernel for the CPU. The favicons under
   ``static/favicons/`` are served with ``max-age`` instead (they never change while a server
   runs).

Live widgets (the interpolator's frames) gain from this; nothing else changes. It is opt-in:
installing the package enables nothing, because it patches two handlers of every server it is
loaded in. Enable it for one server with::

    jupyter lab --ServerApp.jpserver_extensions="{'defuse_widgets.jupyter_latency': True}"

or for good: ``jupyter server extension enable defuse_widgets.jupyter_latency``.
"""

from __future__ import annotations

from typing import Any

_PATCHED = "_defuse_latency"
FAVICON_MAX_AGE_S = 3600


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "defuse_widgets.jupyter_latency"}]


def _nodelay(handler_cls: Any) -> None:
    original = handler_cls.open

    async def open(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            self.set_nodelay(True)
        except Exception as exc:  # noqa: BLE001 (never break a kernel connection over this)
            self.log.warning("defuse_widgets.jupyter_latency: could not set TCP_NODELAY: %s", exc)
        return await original(self, *args, **kwargs)

    handler_cls.open = open


def _cacheable_favicons(handler_cls: Any) -> None:
    original = handler_cls.set_headers

    def set_headers(self: Any) -> None:
        original(self)
        if "/static/favicons/" in self.request.path:
            self.set_header("Cache-Control", f"max-age={FAVICON_MAX_AGE_S}")

    handler_cls.set_headers = set_headers


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from jupyter_server.base.handlers import FileFindHandler
    from jupyter_server.services.kernels.websocket import KernelWebsocketHandler

    if getattr(KernelWebsocketHandler, _PATCHED, False):
        return
    _nodelay(KernelWebsocketHandler)
    _cacheable_favicons(FileFindHandler)
    setattr(KernelWebsocketHandler, _PATCHED, True)
    serverapp.log.info(
        "defuse_widgets.jupyter_latency: TCP_NODELAY on kernel websockets, cacheable favicons"
    )


# the names older notebook-server style loaders look for
load_jupyter_server_extension = _load_jupyter_server_extension
