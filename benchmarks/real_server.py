"""The kit against a real inference server, and the simulator calibrated against it (``make real``).

llama.cpp's ``llama-server`` with Gemma 3 270M (8 slots, 2 threads) on 127.0.0.1:

1. Lone-request figures: time to first token, prefill and decode tokens/s.
2. Sequential vs threads vs gather, 8 queries of 32 tokens (repeats alternate).
3. A concurrency sweep 1..16 over 16 queries, three times (medians): the knee at the slot count.
4. Calibration: a simulator profile fitted to 1 and 3, then the same sweep on the simulator with
   that profile; wall per level side by side (goal: within 20%).

Results and plots go to ``benchmarks/results/real/``.

    .venv/bin/python benchmarks/real_server.py
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pandas as pd

from hybrid import HTTPBackend, OpenAIBackend, Orchestrator, bench, plots, real, sim
from hybrid.calibrate import compare_sweeps, fit_profile, measure_single, sweep_queries, warm_up
from hybrid.provenance import machine_info

OUT = Path("benchmarks/results/real")
LEVELS = (1, 2, 4, 8, 16)
SLOTS = 8
TOKENS = 32
#: Sweeps are repeated and compared by their median per level: client and server share two cores.
REPEATS = 3


async def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    print(f"machine: {info['cpu_model']}, {info['cpu_count']} cores; commit {info['commit']}")
    async with real.serve(slots=SLOTS) as server:
        backend = OpenAIBackend(base_url=server.url, api_key=server.api_key, model=server.model)
        async with Orchestrator(backend, max_concurrency=8, timeout=300) as orch:
            await warm_up(orch, sweep_queries(2, max_tokens=8, prefix="warm"))
            single = await measure_single(orch)
            streamed = await orch.run(sweep_queries(3, max_tokens=TOKENS, prefix="t", stream=True), mode="sequential")
            ttft = sorted(r.ttft_s or 0.0 for r in streamed.results)[1]
            print(
                f"lone request: fixed cost {single.ttft_s * 1000:.0f} ms, prefill {single.prompt_tps:.0f} tokens/s, "
                f"decode {single.completion_tps:.1f} tokens/s; streamed time to first token {ttft * 1000:.0f} ms"
            )
            compared = await bench.compare(orch, sweep_queries(8, max_tokens=TOKENS, prefix="c"), repeats=2)
        summary = bench.summarize(compared)
        columns = ["wall_s", "speedup", "parallel_efficiency", "percent_of_ideal", "completion_tokens_per_s"]
        print(summary[columns].round(3).to_string())
        lean = HTTPBackend(base_url=server.url, api_key=server.api_key, model=server.model)
        real_sweep = await bench.sweep(
            lean, sweep_queries(16, max_tokens=TOKENS), levels=LEVELS, repeats=REPEATS, timeout=300
        )
        stats = await server.fetch_stats()
    per_query_prompt = real_sweep["prompt_tokens"].sum() / real_sweep["queries"].sum()
    per_query_completion = real_sweep["completion_tokens"].sum() / real_sweep["queries"].sum()
    profile = fit_profile(
        single, real_sweep, slots=SLOTS, prompt_tokens=per_query_prompt, completion_tokens=per_query_completion
    )
    print(f"fitted profile: {profile}")

    config = sim.SimConfig(seed=1, time_scale=1.0, slots=SLOTS, profiles={"gemma3-270m": profile})
    async with sim.serve_process(config) as simulated:
        sim_backend = HTTPBackend(base_url=simulated.url, api_key=simulated.api_key, model="gemma3-270m")
        sim_sweep = await bench.sweep(
            sim_backend, sweep_queries(16, max_tokens=TOKENS), levels=LEVELS, repeats=REPEATS, timeout=300
        )
    table = compare_sweeps(real_sweep, sim_sweep)
    print(table.round(3).to_string())
    worst = (table["sim_over_real"] - 1).abs().max()
    print(f"worst disagreement {worst:.0%} (goal within 20%: {'met' if worst <= 0.2 else 'MISSED'})")
    print(f"server after the runs: {stats}")

    for name, frame in (("compare", compared), ("sweep", real_sweep), ("sim_sweep", sim_sweep)):
        frame.drop(columns=["latencies"]).to_csv(OUT / f"{name}.csv", index=False)
    table.to_csv(OUT / "calibration.csv")
    (OUT / "calibration.json").write_text(
        json.dumps(
            {
                "machine": info,
                "single_request": {
                    "fixed_s": single.ttft_s,
                    "prompt_tps": single.prompt_tps,
                    "completion_tps": single.completion_tps,
                    "streamed_ttft_s": ttft,
                },
                "profile": {k: getattr(profile, k) for k in profile.__dataclass_fields__},
                "walls": table.reset_index().to_dict(orient="records"),
                "worst_disagreement": worst,
            },
            indent=1,
        )
    )
    real_median = bench.summarize(real_sweep, "concurrency").reset_index()
    sim_median = bench.summarize(sim_sweep, "concurrency").reset_index()
    plots.efficiency(real_median, title="llama-server, Gemma 3 270M, 8 slots: sweep").savefig(OUT / "sweep.png", dpi=70)
    plots.speedup(compared, title="llama-server: speedup over sequential").savefig(OUT / "speedup.png", dpi=70)
    both = pd.concat([real_sweep.assign(source="real"), sim_sweep.assign(source="simulator")])
    fig = plots.efficiency(real_median, title="Real server vs calibrated simulator: parallel efficiency")
    fig.axes[0].plot(sim_median["concurrency"], sim_median["parallel_efficiency"], "x--", label="simulator, calibrated")
    fig.axes[0].legend(loc="upper left")
    fig.savefig(OUT / "calibration.png", dpi=70)
    both.drop(columns=["latencies"]).to_csv(OUT / "sweeps_side_by_side.csv", index=False)
    print(f"wrote {OUT}/")


if __name__ == "__main__":
    asyncio.run(main())
