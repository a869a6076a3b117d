"""``mode="batch"`` and the simulator's Batch API.

The simulator's files and batches are checked with the official SDK over loopback (the wire);
the strategy's logic (splitting, polling, mapping lines back, resubmission, cost, budget, cache)
runs on the in-process simulator in virtual time, where a batch's minutes take no real time.
Durability is proved against a real process killed while its batch runs.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import openai
import pytest

from hybrid import (
    Batch,
    BudgetExceeded,
    ConfigError,
    HTTPBackend,
    OpenAIBackend,
    Orchestrator,
    Price,
    Query,
    Store,
    Usage,
    sim,
)
from hybrid.tokens import count_message_tokens

PRICES = {"sim-small": Price(prompt_per_mtok=1.0, completion_per_mtok=4.0)}


def grid(n: int, max_tokens: int = 24) -> list[Query]:
    return [Query(f"q{i}", f"Question number {i}?", max_tokens=max_tokens) for i in range(n)]


def jsonl(n: int, model: str = "sim-small") -> bytes:
    lines = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 16},
        }
        for i in range(n)
    ]
    return "\n".join(json.dumps(line) for line in lines).encode()


async def finished(client: openai.AsyncOpenAI, batch_id: str) -> Any:
    while True:
        batch = await client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        await asyncio.sleep(0.01)


# -- the simulator's Batch API, through the official SDK -----------------------------------------
async def test_the_sdk_runs_a_batch_end_to_end_against_the_simulator() -> None:
    async with sim.serve(sim.SimConfig(seed=5, time_scale=0.0)) as server:
        client = openai.AsyncOpenAI(base_url=server.url, api_key=server.api_key, max_retries=0)
        async with client:
            uploaded = await client.files.create(file=("in.jsonl", jsonl(12)), purpose="batch")
            assert uploaded.purpose == "batch" and uploaded.bytes == len(jsonl(12))
            batch = await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            assert batch.status == "validating"
            done = await finished(client, batch.id)
            assert done.status == "completed" and done.error_file_id is None
            assert done.request_counts is not None and done.request_counts.completed == 12
            assert done.output_file_id is not None
            lines = [json.loads(line) for line in (await client.files.content(done.output_file_id)).text.splitlines()]
            assert sorted(line["custom_id"] for line in lines) == sorted(f"c{i}" for i in range(12))
            assert all(line["response"]["status_code"] == 200 for line in lines)
            assert all(line["response"]["body"]["usage"]["completion_tokens"] > 0 for line in lines)
            listed = await client.batches.list()
            assert [b.id for b in listed.data] == [batch.id]
            deleted = await client.files.delete(uploaded.id)
            assert deleted.deleted
            with pytest.raises(openai.NotFoundError):
                await client.files.retrieve(uploaded.id)


async def test_a_batch_answers_as_the_live_api_does() -> None:
    """Seed for seed, a batch line's text and usage are the live endpoint's."""
    async with sim.serve(sim.SimConfig(seed=5, time_scale=0.0)) as server:
        client = openai.AsyncOpenAI(base_url=server.url, api_key=server.api_key, max_retries=0)
        async with client:
            live = await client.chat.completions.create(
                model="sim-small", messages=[{"role": "user", "content": "hi 3"}], max_tokens=16
            )
            uploaded = await client.files.create(file=("in.jsonl", jsonl(5)), purpose="batch")
            batch = await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            done = await finished(client, batch.id)
            assert done.output_file_id is not None
            output = (await client.files.content(done.output_file_id)).text
    lines = {json.loads(x)["custom_id"]: json.loads(x) for x in output.splitlines()}
    body = lines["c3"]["response"]["body"]
    assert body["choices"][0]["message"]["content"] == live.choices[0].message.content
    assert live.usage is not None and body["usage"]["completion_tokens"] == live.usage.completion_tokens


async def test_a_malformed_line_fails_the_batch_at_validation() -> None:
    async with sim.serve(sim.SimConfig(seed=5, time_scale=0.0)) as server:
        client = openai.AsyncOpenAI(base_url=server.url, api_key=server.api_key, max_retries=0)
        async with client:
            data = (
                jsonl(3) + b"\n{not json\n" + b'{"custom_id": "x", "method": "GET", "url": "/v1/models", "body": {}}\n'
            )
            uploaded = await client.files.create(file=("in.jsonl", data), purpose="batch")
            batch = await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            done = await finished(client, batch.id)
    assert done.status == "failed" and done.output_file_id is None
    assert done.errors is not None
    assert [(e.code, e.line) for e in done.errors.data or []] == [("invalid_json_line", 4), ("invalid_url", 5)]


async def test_cancelling_through_the_sdk_keeps_what_was_done() -> None:
    config = sim.SimConfig(seed=5, time_scale=1.0, batch_validate_s=0.0, batch_slowdown=1000.0, slots=1)
    async with sim.serve(config) as server:
        client = openai.AsyncOpenAI(base_url=server.url, api_key=server.api_key, max_retries=0)
        async with client:
            uploaded = await client.files.create(file=("in.jsonl", jsonl(20)), purpose="batch")
            batch = await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            cancelling = await client.batches.cancel(batch.id)
            assert cancelling.status == "cancelling"
            done = await finished(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    assert done.request_counts is not None and done.request_counts.completed < 20


async def test_unknown_ids_and_a_wrong_key_are_openai_shaped_errors() -> None:
    async with sim.serve(sim.SimConfig(seed=5, time_scale=0.0, api_key="sk-right")) as server:
        async with openai.AsyncOpenAI(base_url=server.url, api_key="sk-right", max_retries=0) as client:
            with pytest.raises(openai.NotFoundError):
                await client.batches.retrieve("batch-nope")
            with pytest.raises(openai.BadRequestError):
                await client.batches.create(input_file_id="x", endpoint="/v1/embeddings", completion_window="24h")
        async with openai.AsyncOpenAI(base_url=server.url, api_key="sk-wrong", max_retries=0) as client:
            with pytest.raises(openai.AuthenticationError):
                await client.batches.list()


# -- the batch's clock and faults, in virtual time ------------------------------------------------
@pytest.mark.looptime
async def test_a_batch_walks_its_states_on_the_latency_model() -> None:
    config = sim.SimConfig(seed=5, batch_validate_s=30.0, batch_finalize_s=10.0, batch_slowdown=20.0, slots=1)
    backend = sim.backend(config)
    prompts = [Query(f"c{i}", f"hi {i}", max_tokens=16) for i in range(6)]
    async with Orchestrator(sim.backend(config)) as orch:
        live = await orch.run(prompts, mode="sequential")
    api = backend.batch_api()
    loop = asyncio.get_running_loop()
    batch = await api.create(await api.upload(jsonl(6), "in.jsonl"), {})
    t0 = loop.time()
    seen: list[tuple[str, float]] = []
    while batch["status"] not in ("completed", "failed"):
        if not seen or seen[-1][0] != batch["status"]:
            seen.append((batch["status"], loop.time() - t0))
        await asyncio.sleep(0.5)
        batch = await api.retrieve(batch["id"])
    seen.append((batch["status"], loop.time() - t0))
    assert [status for status, _ in seen] == ["validating", "in_progress", "finalizing", "completed"]
    times = dict(seen)
    assert times["in_progress"] == pytest.approx(30.5, abs=0.51)  # validation takes 30 s
    # Six lines on one slot, each at 20 times its live latency (to the poll's half second).
    assert times["finalizing"] - times["in_progress"] == pytest.approx(20 * live.metrics.sum_latency_s, abs=0.51)
    assert times["completed"] - times["finalizing"] == pytest.approx(10.0, abs=0.51)
    assert batch["request_counts"] == {"total": 6, "completed": 6, "failed": 0}


@pytest.mark.looptime
async def test_seeded_faults_put_lines_in_the_error_file_or_nowhere() -> None:
    faults = sim.Faults(batch_line_error=0.2, batch_line_missing=0.2)
    backend = sim.backend(sim.SimConfig(seed=9, time_scale=0.0, faults=faults))
    api = backend.batch_api()
    batch = await api.create(await api.upload(jsonl(200), "in.jsonl"), {})
    while batch["status"] != "completed":
        await asyncio.sleep(1.0)
        batch = await api.retrieve(batch["id"])
    answered = {json.loads(x)["custom_id"] for x in (await api.content(batch["output_file_id"])).splitlines()}
    errors = [json.loads(x) for x in (await api.content(batch["error_file_id"])).splitlines()]
    failed = {e["custom_id"] for e in errors}
    assert all(e["response"]["status_code"] == 500 for e in errors)
    missing = 200 - len(answered) - len(failed)
    assert not answered & failed
    assert 20 < len(failed) < 60 and 20 < missing < 60  # about 40 each
    assert batch["request_counts"]["failed"] == len(failed)


@pytest.mark.looptime
async def test_an_expired_batch_keeps_its_finished_half() -> None:
    config = sim.SimConfig(seed=5, slots=1, batch_validate_s=0.0, faults=sim.Faults(batch_expire=1.0))
    api = sim.backend(config).batch_api()
    batch = await api.create(await api.upload(jsonl(10), "in.jsonl"), {})
    while batch["status"] not in ("expired", "completed"):
        await asyncio.sleep(5.0)
        batch = await api.retrieve(batch["id"])
    assert batch["status"] == "expired"
    done = (await api.content(batch["output_file_id"])).splitlines()
    expired = [json.loads(x) for x in (await api.content(batch["error_file_id"])).splitlines()]
    assert 0 < len(done) < 10 and len(done) + len(expired) == 10
    assert {e["error"]["code"] for e in expired} == {"batch_expired"}


# -- mode="batch" ---------------------------------------------------------------------------------
@pytest.mark.looptime
async def test_a_batch_run_gives_one_row_per_query_in_order_at_the_batch_price() -> None:
    backend = sim.backend(sim.SimConfig(seed=3))
    queries = grid(30)
    async with Orchestrator(backend, prices=PRICES) as orch:
        run = await orch.run(queries, mode="batch")
        live = await orch.run(queries)
    assert [r.name for r in run.results] == [q.name for q in queries]
    assert run.ok and {r.origin for r in run.results} == {"batch"}
    assert [r.text for r in run.results] == [r.text for r in live.results]
    assert run.metrics.batched == 30 and run.metrics.attempts == 30
    assert run.metrics.batch_cost_usd == pytest.approx(live.metrics.cost_usd * 0.5)
    assert run.metrics.cost_usd == run.metrics.batch_cost_usd
    assert run.metrics.sum_latency_s == 0  # a batch's turnaround is not a latency
    assert run.metrics.wall_s > 40  # validating (30 s) and finalizing (10 s) alone: minutes of virtual time
    assert "through the Batch API" in run.summary()
    assert len(backend.batches.jobs) == 1


@pytest.mark.looptime
async def test_lines_are_split_at_the_providers_limits() -> None:
    backend = sim.backend(sim.SimConfig(seed=3, time_scale=0.0))
    async with Orchestrator(backend) as orch:
        run = await orch.run(grid(20), mode=Batch(max_requests_per_file=7))
        assert run.ok and len(backend.batches.jobs) == 3
        line = len(b'{"custom_id":"19-0123456789abcdef","method":"POST","url":"/v1/chat/completions","body":{}}')
        await orch.run(grid(20), mode=Batch(max_bytes_per_file=5 * (line + 120)))
    sizes = [len(backend.batches.files[job.input_file_id].data.splitlines()) for job in backend.batches.jobs.values()]
    assert sizes[:3] == [7, 7, 6] and sum(sizes[3:]) == 20 and max(sizes[3:]) < 7


@pytest.mark.looptime
async def test_failed_and_missing_lines_are_resubmitted_then_reported() -> None:
    faults = sim.Faults(batch_line_error=0.3, batch_line_missing=0.2)
    backend = sim.backend(sim.SimConfig(seed=4, time_scale=0.0, faults=faults))
    async with Orchestrator(backend) as orch:
        run = await orch.run(grid(200), mode=Batch(resubmits=2))
    frame = run.to_frame()
    # Each round half the lines fail or go missing: 200 -> ~100 -> ~50 -> ~25 left after three batches.
    assert len(backend.batches.jobs) == 3
    assert frame["attempts"].max() == 3 and set(frame["attempts"]) == {1, 2, 3}
    failed = frame[~frame["ok"]]
    assert 5 < len(failed) < 60
    assert set(failed["error_kind"]) <= {"server_error", "batch_incomplete"}
    assert (failed["attempts"] == 3).all()
    uploaded = [backend.batches.files[j.input_file_id].data.splitlines() for j in backend.batches.jobs.values()]
    assert sum(frame["attempts"]) == sum(len(lines) for lines in uploaded)


@pytest.mark.looptime
async def test_a_bad_request_is_final_at_once_and_other_rows_are_unharmed() -> None:
    backend = sim.backend(sim.SimConfig(seed=4, time_scale=0.0))
    queries = [*grid(3), Query("ghost", "hi", model="no-such-model", max_tokens=5)]
    async with Orchestrator(backend) as orch:
        run = await orch.run(queries, mode="batch")
    assert [r.ok for r in run.results] == [True, True, True, False]
    ghost = run["ghost"]
    assert ghost.error is not None and ghost.error.kind == "bad_request" and ghost.attempts == 1
    assert len(backend.batches.jobs) == 1


@pytest.mark.looptime
async def test_an_expiring_provider_ends_in_batch_incomplete_rows() -> None:
    backend = sim.backend(sim.SimConfig(seed=4, slots=1, faults=sim.Faults(batch_expire=1.0)))
    async with Orchestrator(backend) as orch:
        run = await orch.run(grid(8), mode=Batch(resubmits=1), raise_if_all_failed=False)
    kinds = {r.error.kind for r in run.results if r.error is not None}
    assert kinds == {"batch_incomplete"} and 0 < run.metrics.succeeded < 8
    assert all("expired" in str(r.error) for r in run.results if r.error is not None)


@pytest.mark.looptime
async def test_a_budget_stops_lines_before_upload() -> None:
    """Each line's worst case (prompt + max_tokens, at the batch price) is reserved before upload,
    so a budget of ten and a half worst cases lets exactly ten lines go."""
    backend = sim.backend(sim.SimConfig(seed=4, time_scale=0.0))
    queries = grid(40, max_tokens=100)
    price = PRICES["sim-small"]
    worst = price.cost(Usage(prompt_tokens=count_message_tokens(queries[0].messages()), completion_tokens=100))
    budget = 10.5 * worst * price.batch_discount
    async with Orchestrator(backend, prices=PRICES, budget_usd=budget) as orch:
        run = await orch.run(queries, mode="batch", raise_if_all_failed=False)
    refused = [r for r in run.results if r.error is not None]
    assert len(refused) == 30 and all(isinstance(r.error, BudgetExceeded) for r in refused)
    assert run.metrics.batch_cost_usd is not None and run.metrics.batch_cost_usd <= budget
    assert [len(backend.batches.files[j.input_file_id].data.splitlines()) for j in backend.batches.jobs.values()] == [
        10
    ]


@pytest.mark.looptime
async def test_cache_hits_are_not_put_in_a_batch(tmp_path: Path) -> None:
    backend = sim.backend(sim.SimConfig(seed=4, time_scale=0.0))
    async with Orchestrator(backend, store=tmp_path / "runs.sqlite", cache=True) as orch:
        first = await orch.run(grid(10), mode="batch")
        second = await orch.run(grid(12), mode="batch")
    assert {r.origin for r in second.results[:10]} == {"cache"}
    assert [r.text for r in second.results[:10]] == [r.text for r in first.results]
    last_job = list(backend.batches.jobs.values())[-1]
    assert len(backend.batches.files[last_job.input_file_id].data.splitlines()) == 2


@pytest.mark.looptime
async def test_batch_lines_go_through_the_same_cache_and_budget_links_as_a_live_call(tmp_path: Path) -> None:
    """The budget settles each answered line at the batch price and holds nothing back after the
    run; the answers fill the cache, so a live run of the same queries sends nothing."""
    backend = sim.backend(sim.SimConfig(seed=4, time_scale=0.0))
    queries = grid(6, max_tokens=50)
    async with Orchestrator(backend, prices=PRICES, budget_usd=1.0, store=tmp_path / "r.sqlite", cache=True) as orch:
        batched = await orch.run(queries, mode="batch")
        assert orch.budget is not None
        assert orch.budget.spent_usd == pytest.approx(batched.metrics.batch_cost_usd)
        assert orch.budget.reserved_usd == pytest.approx(0.0, abs=1e-15)  # float sums of reservations
        requests = backend.engine.stats()["requests"]
        live = await orch.run(queries)
    assert {r.origin for r in batched.results} == {"batch"} and {r.origin for r in live.results} == {"cache"}
    assert backend.engine.stats()["requests"] == requests  # nothing sent


async def test_mode_batch_is_refused_where_it_cannot_work() -> None:
    async with sim.serve(sim.SimConfig(time_scale=0.0)) as server:
        lean = HTTPBackend(base_url=server.url, api_key=server.api_key, model="sim-small")
        async with Orchestrator(lean) as orch:
            with pytest.raises(ConfigError, match="Batch API"):
                await orch.run(grid(2), mode="batch")
            with pytest.raises(ConfigError, match="pipeline"):
                await orch.pipeline([grid(2)], mode="batch")
        assert server.stats()["requests"] == 0


async def test_a_batch_run_over_the_sdk_matches_the_live_answers() -> None:
    async with sim.serve(sim.SimConfig(seed=6, time_scale=0.0)) as server:
        backend = OpenAIBackend(base_url=server.url, api_key=server.api_key, model="sim-small")
        async with Orchestrator(backend, prices=PRICES) as orch:
            batched = await orch.run(grid(40), mode=Batch(max_requests_per_file=15))
            live = await orch.run(grid(40))
    assert batched.ok and [r.text for r in batched.results] == [r.text for r in live.results]
    assert [r.usage for r in batched.results] == [r.usage for r in live.results]
    assert server.batches is not None and len(server.batches.jobs) == 3


# -- durable batches -------------------------------------------------------------------------------
@pytest.mark.looptime
async def test_batch_ids_are_in_the_store_while_the_batch_runs(tmp_path: Path) -> None:
    store = Store(tmp_path / "runs.sqlite")
    backend = sim.backend(sim.SimConfig(seed=4))
    async with Orchestrator(backend, store=store) as orch:
        task = asyncio.ensure_future(orch.run(grid(10), mode="batch", name="grid"))
        await asyncio.sleep(5.0)  # validating: 30 s
        jobs = store.remote_jobs("grid")
        assert list(jobs["status"]) == ["open"] and list(jobs["job_id"]) == list(backend.batches.jobs)
        await task
    assert list(store.remote_jobs("grid")["status"]) == ["completed"]
    store.close()


@pytest.mark.looptime
async def test_cancelling_a_batch_run_cancels_the_remote_batch_and_keeps_its_answers(tmp_path: Path) -> None:
    store = Store(tmp_path / "runs.sqlite")
    backend = sim.backend(sim.SimConfig(seed=4, slots=1, batch_validate_s=0.0))
    async with Orchestrator(backend, store=store) as orch:
        task = asyncio.ensure_future(orch.run(grid(10), mode="batch", name="grid"))
        job = None
        while job is None or job.completed < 3:
            await asyncio.sleep(1.0)
            job = next(iter(backend.batches.jobs.values()), None)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        partial = orch.last_run
    assert job.status == "cancelled"
    assert partial is not None and partial.cancelled
    kept = [r for r in partial.results if r.ok]
    assert len(kept) == job.completed and 3 <= len(kept) < 10
    assert {r.error.kind for r in partial.results if r.error is not None} == {"cancelled"}
    assert list(store.remote_jobs("grid")["status"]) == ["cancelled"]
    assert store.load("grid").metrics.succeeded == len(kept)
    store.close()


KERNEL = textwrap.dedent(
    """
    import asyncio, sys
    from hybrid import Orchestrator, OpenAIBackend, Query
    url, key, path, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

    async def main():
        backend = OpenAIBackend(base_url=url, api_key=key, model="sim-small")
        async with Orchestrator(backend, store=path) as orch:
            queries = [Query(f"q{i}", f"Question number {i}?", max_tokens=24) for i in range(n)]
            await orch.run(queries, mode="batch", name="nightly")

    asyncio.run(main())
    """
)


@pytest.mark.heavy
async def test_a_kernel_killed_during_a_batch_reattaches_instead_of_paying_again(tmp_path: Path) -> None:
    """The child starts a batch and is SIGKILLed while it runs; resuming in this process finds the
    batch id in the store, waits for that batch and pays for no line twice."""
    n = 300
    path = tmp_path / "runs.sqlite"
    config = sim.SimConfig(seed=8, time_scale=1.0, batch_validate_s=1.0, batch_slowdown=0.0, batch_finalize_s=0.5)
    async with sim.serve(config) as server:
        assert server.batches is not None
        child = subprocess.Popen([sys.executable, "-c", KERNEL, server.url, server.api_key, str(path), str(n)])  # noqa: ASYNC220
        try:
            while not server.batches.jobs:
                assert child.poll() is None, "the child ended before starting its batch"
                await asyncio.sleep(0.02)
            store = Store(path)
            while store.remote_jobs("nightly").empty:
                await asyncio.sleep(0.01)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        job_id = store.remote_jobs("nightly")["job_id"].iloc[0]
        backend = OpenAIBackend(base_url=server.url, api_key=server.api_key, model="sim-small")
        async with Orchestrator(backend, store=store) as orch:
            queries = [Query(f"q{i}", f"Question number {i}?", max_tokens=24) for i in range(n)]
            run = await orch.run(queries, mode=Batch(poll_s=0.2), name="nightly", resume=True)
        assert list(server.batches.jobs) == [job_id]  # no second batch: nothing paid twice
        assert server.batches.lines_answered == n
    assert run.ok and [r.name for r in run.results] == [q.name for q in queries]
    assert {r.origin for r in run.results} == {"batch"}
    assert list(store.remote_jobs("nightly")["status"]) == ["completed"]
    assert len(store.load("nightly").results) == n
    store.close()


@pytest.mark.looptime
async def test_the_batch_bar_follows_the_providers_counts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("HYBRID_PROGRESS", raising=False)
    backend = sim.backend(sim.SimConfig(seed=4, slots=2, batch_validate_s=0.0))
    async with Orchestrator(backend, progress=True) as orch:
        run = await orch.run(grid(12), mode=Batch(poll_s=1.0, poll_max_s=1.0))
    err = capsys.readouterr().err
    assert run.ok and "batch (provider's counts)" in err
    shown = {int(n) for n in re.findall(r"batch \(provider's counts\):\s+\d+%\|[^|]*\|\s*(\d+)/12", err)}
    assert 12 in shown and len(shown) > 2  # it moved while the batch ran, not only at the end
