"""The viewer's aiohttp app: pages from the store, and its events as Server-Sent Events.

Every store read runs in a worker thread (SQLite is blocking), so one slow page never stalls an
event stream.  The event stream polls the store's ``events`` table every ``POLL_S`` for rows after
the last one sent; each SSE event's ``id`` is that row's sequence number, so a browser that
reconnects (``Last-Event-ID``) continues exactly where it stopped, losing and repeating nothing.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from hybrid.errors import ConfigError
from hybrid.store import Store
from hybrid.view import pages

#: How often an event stream looks for new rows in the store.
POLL_S = 0.2
#: A comment line this often keeps proxies and browsers from closing a quiet stream.
KEEPALIVE_S = 15.0
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_STATIC = Path(__file__).with_name("static")
_STORE: web.AppKey[Store] = web.AppKey("store", Store)


def open_store(path: str | Path) -> Store:
    """The store at ``path``; a :class:`ConfigError` if there is none (the viewer never creates one)."""
    if not Path(path).is_file():
        raise ConfigError(
            f"No run store at {str(path)!r}. Give the file your notebook writes to, e.g. "
            "`hybrid view --store runs.sqlite` next to `Orchestrator(..., store='runs.sqlite')`."
        )
    return Store(path)


def make_app(store: Store) -> web.Application:
    """The viewer for ``store`` (a :class:`~hybrid.store.Store`), as an aiohttp application."""
    app = web.Application()
    app[_STORE] = store
    app.router.add_get("/", _runs)
    app.router.add_get("/runs/{name}", _run)
    app.router.add_get("/runs/{name}/events", _events)
    app.router.add_get("/compare", _compare)
    app.router.add_static("/static", _STATIC)
    return app


async def _read(request: web.Request, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``call(store, *args, **kwargs)`` in a worker thread (SQLite reads block)."""
    return await asyncio.to_thread(call, request.app[_STORE], *args, **kwargs)


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html")


async def _runs(request: web.Request) -> web.Response:
    return _html(pages.runs_page(await _read(request, Store.runs)))


def _run_info(store: Store, name: str) -> dict[str, Any] | None:
    runs = store.runs()
    found = runs[runs["name"] == name]
    return None if found.empty else {str(k): v for k, v in found.iloc[0].items()}


async def _run(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    info = await _read(request, _run_info, name)
    if info is None:
        return _html(pages.not_found(f"No run named {name!r} in this store."), status=404)
    rows = await _read(request, Store.brief_rows, name, range(int(info["queries"])))
    run = None
    if info["status"] != "running":
        run = await _read(request, Store.load, name)
    text = await asyncio.to_thread(pages.run_page, name, info, rows, run)
    return _html(text)


async def _compare(request: web.Request) -> web.Response:
    a, b = request.query.get("a", ""), request.query.get("b", "")
    try:
        frame = await _read(request, Store.compare, a, b)
    except (ConfigError, KeyError) as exc:
        return _html(pages.not_found(f"Cannot compare {a!r} with {b!r}: {exc}"), status=404)
    return _html(pages.compare_page(a, b, frame))


async def _events(request: web.Request) -> web.StreamResponse:
    """The run's events as ``text/event-stream``, from after ``Last-Event-ID`` (or ``?after=``)."""
    name = request.match_info["name"]
    info = await _read(request, _run_info, name)
    if info is None:
        return _html(pages.not_found(f"No run named {name!r} in this store."), status=404)
    try:
        last = int(request.headers.get("Last-Event-ID") or request.query.get("after") or 0)
    except ValueError:
        last = 0
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    quiet = 0.0
    while True:
        events = await _read(request, Store.events, name, after=last)
        completed = [idx for _, kind, idx, _, _ in events if kind == "query_completed" and idx is not None]
        rows = await _read(request, Store.brief_rows, name, completed) if completed else {}
        for seq, kind, idx, at, tokens in events:
            data: dict[str, Any] = {"index": idx, "at": at}
            if kind == "query_progress":
                data["tokens"] = tokens
            elif kind == "query_completed" and idx in rows:
                data.update(rows[idx])
            elif kind == "final_result":
                final = await _read(request, _run_info, name)
                counts = {k: int(final[k] or 0) for k in ("queries", "ok", "failed")}
                data.update(status=str(final["status"]), **counts)
            payload = orjson.dumps(data, default=str).decode()
            await response.write(f"id: {seq}\nevent: {kind}\ndata: {payload}\n\n".encode())
            last = seq
        if events:
            quiet = 0.0
        else:
            quiet += POLL_S
            if quiet >= KEEPALIVE_S:
                await response.write(b": keepalive\n\n")
                quiet = 0.0
        await asyncio.sleep(POLL_S)


async def serve(
    store: str | Path | Store,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve the viewer for ``store`` until cancelled; ``announce`` gets the URL once it listens
    (default: print it).  From a terminal: ``hybrid view --store runs.sqlite``."""
    opened = store if isinstance(store, Store) else open_store(store)
    if host not in LOOPBACK:
        print(
            f"hybrid view: serving on {host}, reachable beyond this machine; the store's prompts and answers "
            "are readable by anyone who can reach it.",
            file=sys.stderr,
        )
    runner = web.AppRunner(make_app(opened), handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        url = f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}/"
        (announce or (lambda u: print(f"hybrid view: {u} (Ctrl-C stops)", flush=True)))(url)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
