"""Peak memory of exporting and viewing a big run: 50,000 answers of 100 KB (5 GB of text).

The run is written straight into a store (``hybrid.testing.write_large_run``, no server), then each
reader runs in a fresh process that reports its own peak resident memory (``ru_maxrss``): an
export to ``.jsonl``, ``.csv`` and ``.parquet``, and the viewer's page for the run.  Goal: under
500 MB each.  Needs about 6 GB of free disk in the folder given (default: a temporary one).

    .venv/bin/python benchmarks/store_memory.py [--rows 50000] [--text-bytes 100000] [--folder DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hybrid import Store
from hybrid.provenance import machine_info
from hybrid.testing import write_large_run

#: Run in a fresh process: one reader of the store, then its own peak resident memory in MB.
READER = """
import asyncio, resource, sys
from pathlib import Path
from hybrid import Store
path, what = Path(sys.argv[1]), sys.argv[2]
with Store(path) as store:
    if what == "viewer":
        from aiohttp.test_utils import TestClient, TestServer
        from hybrid.view import make_app

        async def page():
            async with TestClient(TestServer(make_app(store))) as client:
                response = await client.get("/runs/big")
                assert response.status == 200, response.status
                await response.read()

        asyncio.run(page())
    else:
        store.export("big", path.with_name("big" + what))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--text-bytes", type=int, default=100_000)
    parser.add_argument("--folder", type=Path, default=None)
    args = parser.parse_args()
    print(machine_info())
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        path = Path(folder) / "big.sqlite"
        start = time.perf_counter()
        with Store(path) as store:
            write_large_run(store, "big", rows=args.rows, text_bytes=args.text_bytes)
        size = path.stat().st_size / 1e9
        took = time.perf_counter() - start
        print(f"wrote {args.rows:,} answers of {args.text_bytes:,} bytes: {size:.2f} GB in {took:.0f} s")
        for what in (".jsonl", ".csv", ".parquet", "viewer"):
            start = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", READER, str(path), what], check=True, capture_output=True, text=True
            )
            peak = float(out.stdout.split()[-1])
            print(f"{what:>9}: peak {peak:,.0f} MB resident, {time.perf_counter() - start:.0f} s (goal: under 500 MB)")


if __name__ == "__main__":
    main()
