"""``mode=RayShards(shards=N)``: a run split into shards, each the kit's own orchestrator in a Ray actor.

When one client's CPU or one machine is the limit, ``orch.run(queries, mode=RayShards(shards=N))``
runs ``N`` orchestrators on a Ray cluster and gathers their rows into one ``RunResult`` in input
order.  Nothing about a query changes: each shard sends, retries (honouring Retry-After), times out
and classifies errors exactly as the orchestrator does in a notebook, because it *is* that
orchestrator.  This module only splits the work, ships it, and brings rows back.

* **Budgets are shared, never multiplied.**  Shard ``i`` gets its share of ``max_concurrency``,
  ``rpm`` and ``tpm`` (:func:`shares`: whole numbers that add up to the total), so N shards never
  send more than the limits the user set.
* **Chunks are the unit of work.**  Queries go out in chunks, two per actor at a time (so each
  shard always has its next chunk ready); a chunk's rows land when it returns.  If a worker dies,
  the chunks it held are re-run on a fresh actor: no row is lost, none lands twice (some requests
  of the dead chunk may have been sent twice; smaller ``chunk`` sizes bound that).
* **The key never travels as plain text.**  The backend is rebuilt in each worker from its
  ``recipe()`` (URL, model, limits: no key); the key goes separately, masked with a one-time pad
  (:class:`MaskedKey`), so it appears in no Ray log, task argument, dashboard or object-store
  entry.  Masking is not encryption: anyone who can run code on the cluster can unmask it.
* **Which cluster.**  An existing ``ray.init(...)`` in the process is used as is; else
  ``RayShards(address=...)`` or the ``RAY_ADDRESS`` environment variable connects to a running
  cluster; else a local cluster is started for the run and stopped after.  Workers of a remote
  cluster need the kit installed (``ray.init(address=..., runtime_env={"pip": ["hybrid-llm-kit"]})``).

A response cache is read on the driver before sharding, and fresh answers are added to it after;
``budget_usd`` and a run store are the driver's (shards do not write to the store).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

from hybrid.backends.endpoint import Endpoint
from hybrid.backends.protocol import Backend
from hybrid.errors import ConfigError, QueryError, check_int
from hybrid.query import Completion, Price, Query, QueryResult
from hybrid.retry import Retry
from hybrid.strategies import RunContext, Strategy, register

if TYPE_CHECKING:
    from hybrid.orchestrator import Orchestrator

log = logging.getLogger("hybrid")

#: Chunks an actor holds at once: one running, one ready to start.
CHUNKS_PER_ACTOR = 2
#: Chunks lost to dead workers a run survives, per shard, before it gives up on them.
RESTARTS_PER_SHARD = 3


def shares(total: int | None, parts: int) -> list[int | None]:
    """``total`` split into ``parts`` whole shares that add up to it exactly (None stays None)."""
    if total is None:
        return [None] * parts
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class MaskedKey:
    """An API key that is never plain text outside the process that uses it: XORed with a random
    pad of its own length, both kept (and pickled) side by side.  ``str`` and ``repr`` hide it."""

    def __init__(self, key: str) -> None:
        data = key.encode()
        self._pad = secrets.token_bytes(len(data))
        self._masked = bytes(a ^ b for a, b in zip(data, self._pad, strict=True))

    def reveal(self) -> str:
        return bytes(a ^ b for a, b in zip(self._masked, self._pad, strict=True)).decode()

    def __repr__(self) -> str:
        return "MaskedKey(<hidden>)"

    __str__ = __repr__


@dataclass(frozen=True, slots=True, kw_only=True)
class ShardSettings:
    """What one shard's orchestrator is built with: its share of the limits, the run's policies."""

    max_concurrency: int
    rpm: int | None
    tpm: int | None
    rate_window_s: float
    timeout: float | None
    retry: Retry
    prices: dict[str, Price]
    seed: int | None


class ShardWorker:
    """The body of a Ray actor: one orchestrator, opened on first use and kept for the run."""

    def __init__(
        self, backend_type: Callable[..., Backend], recipe: dict[str, Any], key: MaskedKey, settings: ShardSettings
    ) -> None:
        self._backend_type, self._recipe, self._key, self._settings = backend_type, recipe, key, settings
        self._opening: asyncio.Future[Orchestrator] | None = None

    async def _open(self) -> Orchestrator:
        """The shard's orchestrator, opened once: the actor runs two chunks at a time, and both
        must share one orchestrator (one semaphore, one rate limiter), so the first caller opens it
        and the second waits for the same opening."""
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._make())
        return await asyncio.shield(self._opening)

    async def _make(self) -> Orchestrator:
        from hybrid.orchestrator import Orchestrator

        s = self._settings
        backend = self._backend_type(api_key=self._key.reveal(), **self._recipe)
        orch = Orchestrator(
            backend,
            max_concurrency=s.max_concurrency,
            timeout=s.timeout,
            retry=s.retry,
            rpm=s.rpm,
            tpm=s.tpm,
            rate_window_s=s.rate_window_s,
            prices=s.prices,
            seed=s.seed,
        )
        return await orch.__aenter__()

    async def ready(self) -> None:
        """Return once the actor is up and its orchestrator open (the driver starts the run's clock
        when every shard is ready, so the wall is the run's, not Ray's start-up)."""
        await self._open()

    async def run_chunk(self, queries: list[Query]) -> tuple[float, list[QueryResult]]:
        """Run ``queries`` through this shard's orchestrator; the wall-clock time the run started
        (so the driver can place its rows on its own clock) and the rows."""
        orch = await self._open()
        started = time.time()
        run = await orch.run(queries, raise_if_all_failed=False)
        return started, list(run.results)


@dataclass(frozen=True, kw_only=True)
class RayShards(Strategy):
    """The Ray strategy (see the module docstring): ``shards`` actors; ``chunk`` queries per task
    (default: four times a shard's concurrency, at least 16); ``address`` of a running cluster;
    ``num_cpus`` of a local one."""

    name: ClassVar[str] = "ray"
    whole_run: ClassVar[bool] = True

    shards: int = 2
    chunk: int | None = None
    address: str | None = None
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        check_int("shards", self.shards, minimum=1)
        if self.chunk is not None:
            check_int("RayShards(chunk=...)", self.chunk, minimum=1)

    def sharded(self, shards: int) -> RayShards:
        """``run(..., mode="ray", shards=n)``: the old spelling, kept for one release with a warning."""
        warnings.warn(
            f"run(..., mode='ray', shards={shards}) is deprecated: write "
            f"run(..., mode=hybrid.RayShards(shards={shards})).",
            DeprecationWarning,
            stacklevel=3,
        )
        return replace(self, shards=shards)

    def check(self, orchestrator: Orchestrator) -> None:
        backend = orchestrator.backend
        if not isinstance(backend, Endpoint):
            raise ConfigError(
                f"mode='ray' rebuilds the backend in each worker from its settings; {type(backend).__name__} cannot "
                "be. Use OpenAIBackend or HTTPBackend (for the simulator: sim.serve(...) and its URL)."
            )
        backend.recipe()  # refuses a backend bound to this process (sim.backend()), with advice
        if orchestrator.replaying:
            raise ConfigError(
                "cache='replay' (or HYBRID_CACHE=replay) sends nothing, so a Ray cluster has nothing to do: "
                "replay with mode='gather'."
            )
        if orchestrator.adaptive is not None:
            raise ConfigError(
                "mode='ray' shares a fixed max_concurrency between its shards; 'auto' adapts one orchestrator's "
                "limit to what one server answers. Give a number, e.g. max_concurrency=32."
            )
        if orchestrator.max_concurrency < self.shards:
            raise ConfigError(
                f"max_concurrency={orchestrator.max_concurrency} cannot be shared by {self.shards} shards: "
                "give each shard at least one slot."
            )
        for name, limit in (("rpm", orchestrator.limits.rpm), ("tpm", orchestrator.limits.tpm)):
            if limit is not None and limit < self.shards:
                raise ConfigError(f"{name}={limit} cannot be shared by {self.shards} shards.")
        if orchestrator.budget is not None:
            raise ConfigError(
                "budget_usd cannot be shared by Ray shards yet; run the budgeted grid with mode='gather'."
            )
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError(
                "mode='ray' needs Ray: pip install 'hybrid-llm-kit[ray]' (or `pip install ray`)."
            ) from None

    async def execute(self, run: RunContext) -> None:
        await _RayRun(self, run).run()


register(RayShards())


class _RayRun:
    """One run's shards: the actors, the chunks left, and landing rows as chunks return."""

    def __init__(self, settings: RayShards, ctx: RunContext) -> None:
        self.settings, self.ctx, self.port = settings, ctx, ctx.port
        self.state = ctx.state
        port = self.port
        n = settings.shards
        concurrency = shares(port.max_concurrency, n)
        rpm, tpm = shares(port.limits.rpm, n), shares(port.limits.tpm, n)
        self.shard_settings = [
            ShardSettings(
                max_concurrency=c or 1,
                rpm=rpm[i],
                tpm=tpm[i],
                rate_window_s=port.limits.window_s,
                timeout=port.timeout,
                retry=port.retry,
                prices=dict(port.prices),
                seed=port.seed,
            )
            for i, c in enumerate(concurrency)
        ]
        self.size = settings.chunk or max(16, 4 * (port.max_concurrency // n))
        self.chunks: deque[list[tuple[int, Query]]] = deque()
        self.restarts = 0

    async def run(self) -> None:
        hits, todo = self.port.split_cached(self.ctx.todo)  # cache hits land on the driver
        if not todo:
            self.port.land_cached(hits)  # nothing to send: no cluster needed
            return
        import ray

        started_here = not ray.is_initialized()
        if started_here:
            await asyncio.to_thread(self._connect, ray)
        actors = [self._actor(ray, i) for i in range(self.settings.shards)]
        try:
            await asyncio.gather(*(asyncio.wrap_future(actor.ready.remote().future()) for actor in actors))
            self.state.restart_clock(
                f"Ray took {{seconds:.2f}} s to start {'a local cluster and ' if started_here else ''}its "
                f"{len(actors)} shard actors before the first query was submitted; the wall, CPU and queue times "
                "count from then."
            )
            self.port.land_cached(hits)  # after the clock's restart, like every row
            self.chunks.extend(todo[i : i + self.size] for i in range(0, len(todo), self.size))
            await self._drive(ray, actors)
        finally:
            for actor in actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor)
            if started_here:
                await asyncio.to_thread(ray.shutdown)

    def _connect(self, ray: Any) -> None:
        address = self.settings.address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
            return
        ray.init(
            num_cpus=self.settings.num_cpus or os.cpu_count() or 1,
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )

    def _actor(self, ray: Any, shard: int) -> Any:
        backend = self.port.backend
        assert isinstance(backend, Endpoint)
        remote = ray.remote(num_cpus=0)(ShardWorker)
        key = MaskedKey(backend._api_key)
        return remote.remote(type(backend), backend.recipe(), key, self.shard_settings[shard])

    async def _drive(self, ray: Any, actors: list[Any]) -> None:
        """Keep every actor fed with chunks until all have landed; replace an actor that died."""
        generation = [0] * len(actors)  # bumped when a shard's actor is replaced
        running: dict[asyncio.Future[Any], tuple[int, int, list[tuple[int, Query]]]] = {}
        while self.chunks or running:
            for shard, actor in enumerate(actors):
                held = sum(1 for s, _, _ in running.values() if s == shard)
                while held < CHUNKS_PER_ACTOR and self.chunks:
                    chunk = self.chunks.popleft()
                    ref = actor.run_chunk.remote([query for _, query in chunk])
                    running[asyncio.wrap_future(ref.future())] = (shard, generation[shard], chunk)
                    held += 1
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                shard, born, chunk = running.pop(future)
                try:
                    started_wall, results = future.result()
                except ray.exceptions.RayActorError as exc:
                    if self._retry_after_death(chunk, exc) and born == generation[shard]:
                        log.warning("hybrid: Ray shard %d died (%s); its queries run again on a new worker", shard, exc)
                        generation[shard] += 1
                        actors[shard] = self._actor(ray, shard)
                    continue
                self._land(started_wall, chunk, results)

    def _retry_after_death(self, chunk: list[tuple[int, Query]], exc: Exception) -> bool:
        """Queue a dead worker's ``chunk`` again (True), or, after too many deaths, land it failed."""
        self.restarts += 1
        if self.restarts <= RESTARTS_PER_SHARD * self.settings.shards:
            self.chunks.appendleft(chunk)
            return True
        error = QueryError(f"Ray workers kept dying ({self.restarts} lost chunks); last: {type(exc).__name__}.")
        now = self.state.clock()
        for index, query in chunk:
            self.port.land(index, query, None, error, attempts=0, origin="sent", cost=None, started=now, finished=now)
        return False

    def _land(self, started_wall: float, chunk: list[tuple[int, Query]], results: list[QueryResult]) -> None:
        """Put a returned chunk's rows into the run, on the driver's clock and with its indexes."""
        state = self.state
        chunk_t0 = state.clock() - (time.time() - started_wall)  # the shard's run start, on this loop's clock
        for (index, query), result in zip(chunk, results, strict=True):
            started, finished = chunk_t0 + result.started_s, chunk_t0 + result.finished_s
            self.port.started(index, started)
            self.port.land_row(
                replace(
                    result,
                    query=query,
                    index=index,
                    stage=state.stages[index],
                    queue_s=max(0.0, started - state.t0),
                    started_s=started - state.t0,
                    finished_s=finished - state.t0,
                )
            )
            if result.ok and result.text is not None and result.model is not None:
                answer = Completion(
                    text=result.text, usage=result.usage, model=result.model, finish_reason=result.finish_reason
                )
                self.port.remember(query, answer)
