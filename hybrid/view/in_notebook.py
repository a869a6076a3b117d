"""The viewer from a notebook cell: ``store.view()`` serves the store on the kernel's own loop and
shows a link to the run just made (and the page itself, in a frame).

One viewer per store file per kernel, started on first use on a free loopback port and left running
in the background (the kernel's loop serves it between cells).  The link is to 127.0.0.1, which a
browser on the same machine opens; when jupyter-server-proxy is installed, the same page is also
linked through JupyterLab (``<base>proxy/<port>/``), which works from any machine that can open the
notebook.  In a script, with no loop running, it says which command serves the store instead.
"""

from __future__ import annotations

import asyncio
import html
import importlib.util
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from hybrid.view.server import serve

if TYPE_CHECKING:
    from hybrid.store import Store

#: Viewers this kernel serves: store file -> (port, the task serving it).
_SERVED: dict[Path, tuple[int, asyncio.Task[None]]] = {}


@dataclass(frozen=True)
class ViewerLink:
    """Where a run's page is: ``url`` (loopback) and ``proxied`` (through JupyterLab, or None)."""

    run: str | None
    url: str
    proxied: str | None

    def __str__(self) -> str:
        return self.url

    def _repr_html_(self) -> str:
        what = f"run {html.escape(self.run)}" if self.run else "the runs"
        links = f"<a href='{html.escape(self.url)}' target='_blank'>{what} in the viewer</a>"
        if self.proxied:
            links += f" · <a href='{html.escape(self.proxied)}' target='_blank'>through JupyterLab</a>"
        return (
            f"<p>{links}</p><iframe src='{html.escape(self.proxied or self.url)}' "
            "style='width: 100%; height: 600px; border: 1px solid #d0d7de'></iframe>"
        )


def view(store: Store, run: str | None = None) -> ViewerLink | str:
    """Serve ``store`` from this kernel (once) and link to ``run`` (default: the latest run)."""
    runs = store.runs()
    name = run if run is not None else (str(runs["name"].iloc[-1]) if len(runs) else None)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return f"Serve this store with: hybrid view --store {store.path}"
    path = Path(store.path).resolve()
    served = _SERVED.get(path)
    if served is None or served[1].done():
        port = _free_port()
        task = loop.create_task(serve(path, port=port, announce=lambda url: None), name=f"hybrid-view-{port}")
        _SERVED[path] = served = (port, task)
    port = served[0]
    page = f"runs/{quote(name, safe='')}" if name else ""
    proxied = None
    if importlib.util.find_spec("jupyter_server_proxy") is not None:
        prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")
        proxied = f"{prefix.rstrip('/')}/proxy/{port}/{page}"
    return ViewerLink(name, f"http://127.0.0.1:{port}/{page}", proxied)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
