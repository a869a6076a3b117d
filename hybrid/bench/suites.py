"""``hybrid bench``: the benchmark suites against a simulator in its own process, with results
(CSV, JSON with machine info and the commit) and plots written to an output folder."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from hybrid import plots, validity
from hybrid.backends import HTTPBackend
from hybrid.bench import make_queries, summarize, sweep
from hybrid.bench.peers import peers
from hybrid.provenance import machine_info

#: The suites (``hybrid bench --help`` says what each measures; a test keeps the two lists equal).
SUITES = ("scenario", "sweep", "peers")


#: What the peers' calls/s mean on a shared machine (benchmarks/README.md has the measurements).
PEERS_NOTE = (
    "calls/s is what this process got of the CPU; on a busy machine the OS shares CPU per thread, so a thread "
    "pool can out-run one event loop while spending more per call. CPU per call is the fair comparison."
)


async def run_suites(names: Sequence[str], *, out_dir: Path, quick: bool = False, uvloop: bool = False) -> int:
    """``hybrid bench``: run the named suites against a simulator process (on uvloop with ``uvloop``,
    as the client then is too); write results and plots."""
    from hybrid.sim.config import ModelProfile, SimConfig
    from hybrid.sim.serve import serve_process

    unknown = [n for n in names if n not in SUITES]
    if unknown:
        print(f"hybrid bench: unknown suite(s) {unknown}; choose from {', '.join(SUITES)}")
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = machine_info()
    written: list[Path] = []

    def save(name: str, frame: pd.DataFrame, extra: dict[str, Any] | None = None) -> None:
        csv = out_dir / f"{name}.csv"
        frame.drop(columns=["latencies"], errors="ignore").to_csv(csv, index=False)
        raw = frame.to_dict(orient="records")
        (out_dir / f"{name}.json").write_text(
            json.dumps({"machine": meta, **(extra or {}), "samples": raw}, indent=1, default=str)
        )
        written.extend([csv, out_dir / f"{name}.json"])

    if "scenario" in names:
        from hybrid.demo import measure, scenario_summary

        scale = 0.05 if quick else 0.1
        legacy, hybrid, _ = await measure(time_scale=scale, uvloop=uvloop)
        summary = scenario_summary(legacy, hybrid, time_scale=scale)
        save("scenario", pd.DataFrame([{k: v for k, v in summary.items() if not isinstance(v, list)}]))
        plots.timeline({"legacy": legacy, "hybrid": hybrid}).savefig(out_dir / "scenario_timeline.png", dpi=60)
        written.append(out_dir / "scenario_timeline.png")
        print(f"scenario: speedup {summary['speedup']:.2f}x, token reduction {summary['token_reduction']:.1%}")

    if "sweep" in names:
        # A server with 8 slots and a fixed time per answer (0.2 s; 0.05 s when quick): throughput
        # rises until 8 in flight, then queues.
        profile = {"sim-small": ModelProfile(ttft_s=2.0, prompt_tps=1e6, completion_tps=1e6, jitter=0.05)}
        config = SimConfig(seed=1, time_scale=0.025 if quick else 0.1, slots=8, profiles=profile)
        async with serve_process(config, uvloop=uvloop) as server:
            backend = HTTPBackend(base_url=server.url, api_key=server.api_key, model="sim-small")
            frame = await sweep(
                backend, make_queries(32 if quick else 64), levels=(1, 2, 4, 8, 16, 32), timeout=None, fresh_prefix=True
            )
        save("sweep", frame, {"server": f"8 slots, {2.0 * config.time_scale:g} s per answer"})
        plots.efficiency(frame, title="Concurrency sweep: a server with 8 slots").savefig(
            out_dir / "sweep_efficiency.png", dpi=60
        )
        plots.decomposition(frame, title="Where each query's time went, per level").savefig(
            out_dir / "sweep_decomposition.png", dpi=60
        )
        written.extend([out_dir / "sweep_efficiency.png", out_dir / "sweep_decomposition.png"])
        columns = ["wall_s", "speedup", "throughput_qps", "parallel_efficiency"]
        table = summarize(frame, "concurrency")[columns].round(3)
        flagged = frame.groupby("concurrency", sort=False)["efficiency_misleading"].any()
        table["efficiency_misleading"] = flagged.map({True: "yes", False: "no"})
        # each level's validity flags (hybrid.validity), over its repeats
        table["flags"] = frame.groupby("concurrency", sort=False)["flags"].agg(
            lambda runs: ", ".join(validity.ordered(flag for flags in runs for flag in flags)) or "-"
        )
        print(table.to_string())
        saturated = frame.attrs["saturated_at"]
        print(
            "throughput still rising at the last level" if saturated is None else f"saturated at {saturated} in flight"
        )

    if "peers" in names:
        async with serve_process(SimConfig(seed=1, time_scale=0.0), uvloop=uvloop) as server:
            frame = await peers(
                server.url,
                server.api_key,
                "sim-small",
                make_queries(300 if quick else 2000),
                concurrency=64,
                repeats=1 if quick else 3,
            )
        save("peers", frame, {"workload": "time scale 0, concurrency 64, server in its own process"})
        table = frame.groupby("peer", sort=False)[["calls_per_s", "cpu_per_call_ms", "ratio_to_kit"]].median()
        print(table.round(3).to_string())
        print(PEERS_NOTE)
    print("Wrote:", *(f"  {p}" for p in written), sep="\n")
    return 0
