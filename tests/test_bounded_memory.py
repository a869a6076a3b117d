"""The viewer and exports hold a chunk of a run, never the whole run's text.

Runs of a few thousand answers of 50 KB, written straight into a store (``hybrid.testing.
write_large_run``), are exported and shown by the viewer under ``tracemalloc``; the peak of Python
memory must stay a small part of the run's text, and grow far less than the text does between a run
and one twice its size.  ``benchmarks/store_memory.py`` measures the same at 50,000 x 100 KB.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from aiohttp.test_utils import TestClient, TestServer

from hybrid import Store
from hybrid.testing import write_large_run
from hybrid.view import make_app

pytestmark = pytest.mark.heavy  # writes a few hundred MB

TEXT_BYTES = 50_000
SIZES = (2_100, 4_200)  # both beyond plots.MAX_BARS, so both pages draw their plots in as many groups


async def peak(work: Callable[[], Awaitable[object]]) -> int:
    tracemalloc.start()
    try:
        await work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def test_export_and_the_viewer_stay_flat_as_a_run_grows(tmp_path: Path) -> None:
    peaks: dict[str, list[int]] = {}
    with Store(tmp_path / "warm-up.sqlite") as store:  # first uses import and cache what they need
        write_large_run(store, "small", rows=10, text_bytes=TEXT_BYTES)
        for suffix in (".jsonl", ".csv", ".parquet"):
            store.export("small", tmp_path / f"small{suffix}")
    for rows in SIZES:
        with Store(tmp_path / f"runs-{rows}.sqlite") as store:
            write_large_run(store, "big", rows=rows, text_bytes=TEXT_BYTES)
            for suffix in (".jsonl", ".csv", ".parquet"):
                target = tmp_path / f"big-{rows}{suffix}"

                async def export(target: Path = target) -> object:
                    return store.export("big", target)

                peaks.setdefault(suffix, []).append(await peak(export))
                if suffix == ".parquet":  # compressed: count its rows and measure one answer
                    table = pq.read_table(target, columns=["text"])
                    assert table.num_rows == rows and len(table.column("text")[rows - 1].as_py()) == TEXT_BYTES
                else:
                    assert target.stat().st_size > rows * TEXT_BYTES  # every answer, whole
            async with TestClient(TestServer(make_app(store))) as client:

                async def view() -> object:
                    response = await client.get("/runs/big")
                    assert response.status == 200
                    return await response.text()

                peaks.setdefault("viewer", []).append(await peak(view))
    added_text = (SIZES[1] - SIZES[0]) * TEXT_BYTES
    for what, (small, large) in peaks.items():
        assert large < 0.2 * SIZES[1] * TEXT_BYTES, (what, small, large)  # a small part of the run's text
        assert large - small < 0.1 * added_text, (what, small, large)  # and flat as the run doubles
