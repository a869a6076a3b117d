"""The viewer inside JupyterLab: a jupyter-server-proxy server, with a launcher item.

With ``jupyter-server-proxy`` installed (the ``notebook`` extra), JupyterLab's launcher has a
"hybrid view" item that opens the viewer in a Lab tab, at ``<lab>/hybrid-view/``.  It serves the
store named by ``HYBRID_STORE`` (default ``runs.sqlite`` in the folder JupyterLab was started in);
until a run makes that file, the page says so.  The proxy sets each request's ``Host`` to
127.0.0.1, the name the viewer answers to, so JupyterLab's own address (which a hub may give any
name) need not be allowed; the viewer still refuses other names reaching its port directly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

#: The environment variable naming the store the JupyterLab item serves.
STORE_ENV = "HYBRID_STORE"


def setup() -> dict[str, Any]:
    """jupyter-server-proxy's description of the viewer (entry point ``jupyter_serverproxy_servers``)."""
    return {
        "command": [sys.executable, "-m", "hybrid.view.proxy", "{port}"],
        "timeout": 30,
        "request_headers_override": {"Host": "127.0.0.1"},
        "launcher_entry": {
            "title": "hybrid view",
            "icon_path": str(Path(__file__).with_name("static") / "favicon.svg"),
        },
        "new_browser_tab": False,
    }


def main(argv: list[str]) -> int:
    from hybrid.notebook import run_sync
    from hybrid.view.server import serve

    store = os.environ.get(STORE_ENV, "runs.sqlite")
    run_sync(serve(store, port=int(argv[0]), missing_ok=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
