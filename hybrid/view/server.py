"""The viewer's aiohttp app: pages from the store, and its events as Server-Sent Events.

Every store read runs in a worker thread (SQLite is blocking), so one slow page never stalls an
event stream.  The event stream polls the store's ``events`` table every ``POLL_S`` for rows after
the last one sent; each SSE event's ``id`` is that row's sequence number, so a browser that
reconnects (``Last-Event-ID``) continues exactly where it stopped, losing and repeating nothing.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from hybrid.errors import ConfigError
from hybrid.store import Store, open_existing
from hybrid.view import pages

#: How often an event stream looks for new rows in the store.
POLL_S = 0.2
#: Events read from the store at a time (with their rows): what one stream holds in memory.
EVENTS_PER_READ = 1000
#: A comment line this often keeps proxies and browsers from closing a quiet stream.
KEEPALIVE_S = 15.0
LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: The largest ``Last-Event-ID`` there can be (an event's sequence number is a SQLite integer).
MAX_EVENT_ID = 2**63 - 1
#: The cookie that carries the access token of a viewer bound beyond loopback.
TOKEN_COOKIE = "hybrid_view_token"
_STATIC = Path(__file__).with_name("static")


class _Opened:
    """The store a viewer reads, reopened when its file is replaced (and missing while it is deleted,
    or, for a viewer started before its store, until a run makes it)."""

    def __init__(self, store: Store | Path) -> None:
        self.path = store.path if isinstance(store, Store) else Path(store)
        self._store = store if isinstance(store, Store) else None
        self._file = _file_identity(self.path) if self._store is not None else None

    @property
    def store(self) -> Store:
        """The open store (the guard asks :meth:`current` first, and answers 503 while it is None)."""
        if self._store is None:
            raise ConfigError(f"There is no run store at {self.path} yet.")
        return self._store

    def current(self) -> Store | None:
        """The store as its file stands now: None when the file is gone (or not made yet)."""
        try:
            identity = _file_identity(self.path)
        except FileNotFoundError:
            return None
        if identity != self._file:  # the file appeared, or another file is at the same path
            old, self._store, self._file = self._store, open_existing(self.path), identity
            if old is not None:
                old.close()
        return self._store


def _file_identity(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_dev, stat.st_ino


_OPENED: web.AppKey[_Opened] = web.AppKey("opened", _Opened)


def make_app(store: Store | Path, *, hosts: Iterable[str] = LOOPBACK, token: str | None = None) -> web.Application:
    """The viewer for ``store`` (a :class:`~hybrid.store.Store`, or the path of one a run will make),
    as an aiohttp application.

    It answers only requests whose ``Host`` is one of ``hosts`` (by default loopback names), so a
    web page elsewhere cannot read it through DNS rebinding; with ``token``, every request must
    also carry it (``?token=`` once, then a cookie), which :func:`serve` requires when bound beyond
    loopback."""
    app = web.Application(middlewares=[_relative, _guard(frozenset(h.lower().strip("[]") for h in hosts), token)])
    app[_OPENED] = _Opened(store)
    app.router.add_get("/", _runs)
    # Any name but a slash: aiohttp's default pattern for a path part leaves out { and }.
    app.router.add_get("/runs/{name:[^/]+}", _run)
    app.router.add_get("/runs/{name:[^/]+}/events", _events)
    app.router.add_get("/runs/{name:[^/]+}/rows/{index:[0-9]+}", _answer)
    app.router.add_get("/compare", _compare)
    app.router.add_get("/pareto", _pareto)
    app.router.add_static("/static", _STATIC)
    app.router.add_get("/favicon.ico", _favicon)  # what a browser asks for before it reads a page's icon link
    return app


@web.middleware
async def _relative(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    """Name the viewer's root in every page's ``<base>``, relative to the page (``./`` for ``/``,
    ``../`` for ``/runs/x``): the pages link relative to it, so they work at any prefix, such as
    jupyter-server-proxy's ``/proxy/<port>/``, which the viewer never sees."""
    response: web.StreamResponse = await handler(request)
    if isinstance(response, web.Response) and response.content_type == "text/html" and response.text:
        depth = request.rel_url.raw_path.count("/") - 1  # encoded: a quoted slash in a run name is no level
        base = "../" * depth if depth else "./"
        response.text = response.text.replace("<head>", f"<head><base href='{base}'>", 1)
    return response


def _guard(hosts: frozenset[str], token: str | None) -> Any:
    """The middleware that checks every request's Host (and token), and that the store is there."""

    @web.middleware
    async def guard(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        if _host_name(request.host or "") not in hosts:
            return _html(pages.refused(f"This viewer answers only to {', '.join(sorted(hosts))}."), status=421)
        given = request.query.get("token")
        if token is not None and token not in (given, request.cookies.get(TOKEN_COOKIE)):
            return _html(pages.refused("Open the link `hybrid view` printed: it carries the access token."), 403)
        if await asyncio.to_thread(request.app[_OPENED].current) is None:
            path = request.app[_OPENED].path
            gone = (
                f"There is no run store at {path}: it was deleted or moved, or no run has made it yet "
                f"(Orchestrator(..., store={str(path)!r}) does). Reload this page once it exists."
            )
            return _html(pages.refused(gone), status=503)
        response: web.StreamResponse = await handler(request)
        if token is not None and given == token:
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
        return response

    return guard


def _number(given: str, *, maximum: int) -> int | None:
    """``given`` as a whole number from 0 to ``maximum`` (a page, an event id); None if it is not one."""
    if not (given.isascii() and given.isdigit()) or int(given) > maximum:
        return None
    return int(given)


def _host_name(header: str) -> str:
    """The name in a ``Host`` header, without its port or an IPv6 address's brackets, lower case."""
    name = header if header.endswith("]") or header.count(":") != 1 else header.rsplit(":", 1)[0]
    if name.startswith("[") and "]" in name:
        name = name[1 : name.index("]")]
    return name.lower()


async def _read(request: web.Request, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``call(store, *args, **kwargs)`` in a worker thread (SQLite reads block)."""
    return await asyncio.to_thread(call, request.app[_OPENED].store, *args, **kwargs)


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html")


async def _favicon(request: web.Request) -> web.FileResponse:
    return web.FileResponse(_STATIC / "favicon.svg", headers={"Content-Type": "image/svg+xml"})


async def _runs(request: web.Request) -> web.Response:
    return _html(pages.runs_page(await _read(request, Store.runs)))


def run_info(store: Store, name: str) -> dict[str, Any] | None:
    """Run ``name``'s line of ``store.runs()`` (status, counts, mode) as a run page reads it; None if absent."""
    runs = store.runs()
    found = runs[runs["name"] == name]
    return None if found.empty else {str(k): v for k, v in found.iloc[0].items()}


async def _run(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    info = await _read(request, run_info, name)
    if info is None:
        return _html(pages.not_found(f"No run named {name!r} in this store."), status=404)
    given = request.query.get("page", "0")
    page_number = _number(given, maximum=(max(1, int(info["queries"])) - 1) // pages.PAGE_ROWS)
    if page_number is None:
        return _html(pages.refused(f"No page {given[:20]!r} of run {name!r}."), status=404)
    after = await _read(request, Store.last_event, name)  # before the rows: a row landing between is shown once
    first = page_number * pages.PAGE_ROWS
    rows = await _read(request, Store.brief_rows, name, range(first, first + pages.PAGE_ROWS))
    run = None
    if info["status"] != "running":
        run = await _read(request, Store.load, name, texts=False)  # the page reads 300 characters a row
    body = await asyncio.to_thread(pages.run_body, name, info, rows, run, page_number=page_number, after=after)
    return _html(pages.page(f"Run {name}", body, script=info["status"] == "running"))


async def _answer(request: web.Request) -> web.Response:
    name, index = request.match_info["name"], int(request.match_info["index"])
    text = (await _read(request, Store.texts, name, index, index + 1)).get(index)
    if text is None:
        return _html(pages.not_found(f"Run {name!r} has no answer at row {index}."), status=404)
    return _html(pages.answer_page(name, index, text))


async def _compare(request: web.Request) -> web.Response:
    a, b = request.query.get("a", ""), request.query.get("b", "")
    if a == b:
        return _html(pages.refused(f"Pick two different runs to compare (both were {a!r})."), status=400)
    try:
        frame = await _read(request, Store.compare, a, b)
    except (ConfigError, KeyError) as exc:
        return _html(pages.not_found(f"Cannot compare {a!r} with {b!r}: {exc}"), status=404)
    verdicts = await _read(request, _verdicts, a, b)
    names = list((await _read(request, Store.runs))["name"])
    runs = {a: await _read(request, Store.load, a, texts=False), b: await _read(request, Store.load, b, texts=False)}
    return _html(await asyncio.to_thread(pages.compare_page, a, b, frame, verdicts, names, runs))


#: The pareto page loads at most this many runs (the latest finished ones): each is loaded whole.
PARETO_RUNS = 30


async def _pareto(request: web.Request) -> web.Response:
    return _html(await _read(request, _pareto_body))


def _pareto_body(store: Store) -> str:
    """The latest finished runs that answered anything, each at its throughput and p95 latency
    (``RunResult.metrics``, as the notebook computes them), the frontier marked."""
    runs = store.runs()
    finished = runs[(runs["status"] == "finished") & (runs["ok"] > 0)].tail(PARETO_RUNS)
    loaded = {name: store.load(name, texts=False) for name in finished["name"]}
    return pages.pareto_page(loaded, shown=len(loaded), of=int((runs["status"] == "finished").sum()))


def _verdicts(store: Store, a: str, b: str) -> Any:
    """:func:`~hybrid.bench.compare_runs`' table for ``b`` against ``a``, or None when the runs
    cannot be compared with intervals (too few answered queries)."""
    from hybrid.bench.comparison import compare_runs

    try:
        return compare_runs(a, b, store=store).table
    except ConfigError:
        return None


async def _events(request: web.Request) -> web.StreamResponse:
    """The run's events as ``text/event-stream``, from after ``Last-Event-ID`` (or ``?after=``)."""
    name = request.match_info["name"]
    info = await _read(request, run_info, name)
    if info is None:
        return _html(pages.not_found(f"No run named {name!r} in this store."), status=404)
    given = request.headers.get("Last-Event-ID") or request.query.get("after") or "0"
    last = _number(given, maximum=MAX_EVENT_ID)
    if last is None:
        return _html(pages.refused(f"Last-Event-ID must be an event's number, got {given[:40]!r}."), status=400)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    quiet = 0.0
    while True:
        events = await _read(request, Store.events, name, after=last, limit=EVENTS_PER_READ)
        completed = [idx for _, kind, idx, _, _ in events if kind == "query_completed" and idx is not None]
        rows = await _read(request, Store.brief_rows, name, completed) if completed else {}
        for seq, kind, idx, at, tokens in events:
            data: dict[str, Any] = {"index": idx, "at": at}
            if kind == "query_progress":
                data["tokens"] = tokens
            elif kind == "query_completed" and idx in rows:
                data.update(rows[idx])
            elif kind == "final_result":
                final = await _read(request, run_info, name)
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
        if len(events) < EVENTS_PER_READ:  # caught up: wait for new rows (a full read goes on at once)
            await asyncio.sleep(POLL_S)


async def serve(
    store: str | Path | Store,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    announce: Callable[[str], None] | None = None,
    allow_hosts: Iterable[str] = (),
    missing_ok: bool = False,
) -> None:
    """Serve the viewer for ``store`` until cancelled; ``announce`` gets the URL once it listens
    (default: print it).  From a terminal: ``hybrid view --store runs.sqlite``.

    Bound to loopback, it answers to loopback names only.  Bound beyond it, it also answers to
    ``host`` and ``allow_hosts`` (the names people will type), and every request needs the access
    token that the announced URL carries.  With ``missing_ok`` (the viewer inside JupyterLab, started
    before any run), a store file that does not exist yet is a page saying so until a run makes it."""
    if isinstance(store, Store):
        opened: Store | Path = store
    else:
        missing = missing_ok and not await asyncio.to_thread(Path(store).exists)
        opened = Path(store) if missing else open_existing(store)
    token = None
    if host not in LOOPBACK:
        token = secrets.token_urlsafe(16)
        print(
            f"hybrid view: serving on {host}, reachable beyond this machine: only with the link below, which "
            "carries an access token; anyone with the link can read the store's prompts and answers.",
            file=sys.stderr,
        )
    hosts = {*LOOPBACK, *allow_hosts} | ({host} if token else set())
    app = make_app(opened, hosts=hosts, token=token)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        url = f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}/"
        url += f"?token={token}" if token else ""
        (announce or (lambda u: print(f"hybrid view: {u} (Ctrl-C stops)", flush=True)))(url)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
