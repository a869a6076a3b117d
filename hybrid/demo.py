"""``hybrid demo``: the seeds' comparison, measured — legacy 6 prompts in 3 stages vs hybrid 2 gathered.

The simulator runs in its own process (so its CPU is not the client's) with the construction-audit
scenario's scripted replies and its slow-large-model profile, compressed by ``time_scale``.  The
demo prints a table like the seeds' and writes ``summary.json``, ``timeline.png``, ``tokens.png``
and ``efficiency.png`` to the output folder.

``virtual=True`` (``hybrid demo --virtual``) runs the same study at the model's full pace on a
virtual clock (:func:`hybrid.simulate` with the simulator in-process): the table shows seconds of
model time, exactly and the same on every machine, in well under a second.  A thread pool cannot
run on a virtual clock, so there the legacy stages are gathered instead, with the same overlap a
pool per stage gives; the threads' own client overhead, which virtual time cannot measure, is
left out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hybrid import plots
from hybrid.backends import Backend, OpenAIBackend
from hybrid.metrics import ratio
from hybrid.orchestrator import Orchestrator
from hybrid.provenance import machine_info
from hybrid.results import RunResult
from hybrid.retry import Retry
from hybrid.scenarios import construction_audit as audit
from hybrid.sim import backend as sim_backend
from hybrid.sim.serve import serve_process
from hybrid.virtual_time import simulate


def scenario_summary(legacy: RunResult, hybrid: RunResult, *, time_scale: float) -> dict[str, Any]:
    """The summary numbers of a legacy-vs-hybrid comparison (what ``summary.json`` holds)."""
    lm, hm = legacy.metrics, hybrid.metrics
    return {
        "speedup": ratio(lm.wall_s, hm.wall_s),
        "token_reduction": 1.0 - ratio(hm.total_tokens, lm.total_tokens),
        "parallel_efficiency": hm.parallel_efficiency,
        "ideal_efficiency": hm.ideal_efficiency,
        "percent_of_ideal": hm.percent_of_ideal,
        "legacy_wall_s": lm.wall_s,
        "hybrid_wall_s": hm.wall_s,
        "legacy_tokens": lm.total_tokens,
        "hybrid_tokens": hm.total_tokens,
        "legacy_cost_usd": lm.cost_usd,
        "hybrid_cost_usd": hm.cost_usd,
        "time_scale": time_scale,
        "legacy_wall_full_pace_s": ratio(lm.wall_s, time_scale) if time_scale else None,
        "hybrid_wall_full_pace_s": ratio(hm.wall_s, time_scale) if time_scale else None,
        "legacy_queries": [_row(r) for r in legacy.results],
        "hybrid_queries": [_row(r) for r in hybrid.results],
    }


def _row(result: Any) -> dict[str, Any]:
    return {
        "name": result.name,
        "stage": None if result.stage is None else result.stage + 1,
        "ok": result.ok,
        "latency_s": result.latency_s,
        "prompt_tokens": result.usage.prompt_tokens,
        "completion_tokens": result.usage.completion_tokens,
    }


def format_table(summary: dict[str, Any]) -> str:
    """The seeds' table: time and tokens per query, totals, speedup, efficiency, reduction, cost."""
    price = audit.PRICES[audit.MODEL]
    lines = [
        "Construction audit: legacy (6 role prompts, 3 stages) vs hybrid (2 merged prompts, gathered)",
        f"Simulated model {audit.MODEL}, "
        + (
            "virtual clock at full pace (seconds of model time, exact)"
            if summary.get("virtual")
            else f"time scale {summary['time_scale']} (measured seconds; divide by the scale for the model's full pace)"
        ),
        "",
        f"{'query':<28}{'stage':>6}{'time s':>9}{'prompt':>9}{'compl.':>8}{'tokens':>8}",
    ]
    for label in ("legacy", "hybrid"):
        lines.append(label.upper())
        for q in summary[f"{label}_queries"]:
            stage = "" if q["stage"] is None else str(q["stage"])
            mark = "" if q["ok"] else " FAILED"
            lines.append(
                f"  {q['name'] + mark:<26}{stage:>6}{q['latency_s']:>9.2f}{q['prompt_tokens']:>9}"
                f"{q['completion_tokens']:>8}{q['prompt_tokens'] + q['completion_tokens']:>8}"
            )
        lines.append(
            f"  {'total (wall)':<26}{'':>6}{summary[f'{label}_wall_s']:>9.2f}{'':>17}{summary[f'{label}_tokens']:>8}"
        )
    cost = ""
    if summary["legacy_cost_usd"] is not None and summary["hybrid_cost_usd"] is not None:
        cost = (
            f"cost                  ${summary['legacy_cost_usd']:.4f} -> ${summary['hybrid_cost_usd']:.4f} "
            f"(at ${price.prompt_per_mtok:.2f} per million prompt tokens, "
            f"${price.completion_per_mtok:.2f} per million completion)"
        )
    lines += [
        "",
        f"speedup               {summary['speedup']:.2f}x",
        f"parallel efficiency   {summary['parallel_efficiency']:.0%} (hybrid's sum of query times / wall: "
        f"over 100% = overlap); ideal {summary['ideal_efficiency']:.0%}, reached {summary['percent_of_ideal']:.0%}",
        f"token reduction       {summary['token_reduction']:.1%} "
        f"({summary['legacy_tokens']} -> {summary['hybrid_tokens']})",
        cost,
    ]
    return "\n".join(line for line in lines if line is not None)


async def measure(
    *, time_scale: float = 0.1, seed: int = 7, virtual: bool = False, uvloop: bool = False
) -> tuple[RunResult, RunResult, audit.AuditReport]:
    """Run legacy (staged, thread pool per stage) and hybrid (gathered) on a simulator process
    (on uvloop with ``uvloop``), or with ``virtual`` on the in-process simulator at full pace on a
    virtual clock."""
    if virtual:
        in_process = sim_backend(audit.sim_config(seed=seed, time_scale=1.0), model=audit.MODEL)
        return await simulate(_audit, in_process, "gather", seed)
    async with serve_process(audit.sim_config(seed=seed, time_scale=time_scale), uvloop=uvloop) as server:
        backend = OpenAIBackend(base_url=server.url, api_key=server.api_key, model=audit.MODEL)
        return await _audit(backend, "threads", seed)


async def _audit(backend: Backend, legacy_mode: str, seed: int) -> tuple[RunResult, RunResult, audit.AuditReport]:
    async with Orchestrator(
        backend, max_concurrency=8, timeout=600.0, retry=Retry(attempts=3), prices=audit.PRICES, seed=seed
    ) as orch:
        legacy = await orch.pipeline(audit.legacy_stages(), mode=legacy_mode)
        hybrid = await orch.run(audit.hybrid_queries(), raise_if_all_failed=False)
    return legacy, hybrid, audit.merge_report(hybrid)


def clock_note(summary: dict[str, Any]) -> str:
    """Which clock the demo's times are on, for a plot's title: a real-time run is compressed by its
    time scale, and a reader comparing with the table's full-pace numbers must know by how much."""
    scale = summary["time_scale"]
    if summary.get("virtual"):
        return "virtual clock, the model's full pace"
    if scale == 1:
        return "real time, the model's full pace"
    return f"real time, compressed {1 / scale:g}x: divide by {scale:g} for the model's pace"


def write_outputs(out_dir: Path, legacy: RunResult, hybrid: RunResult, summary: dict[str, Any]) -> list[Path]:
    """``summary.json`` and the three plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in ("summary.json", "timeline.png", "tokens.png", "efficiency.png")]
    paths[0].write_text(json.dumps({**summary, "machine": machine_info()}, indent=2))
    runs = {"legacy": legacy, "hybrid": hybrid}
    timeline = plots.timeline(
        runs, title=f"Legacy (3 stages) vs hybrid (gathered), one bar per query\n({clock_note(summary)})"
    )
    timeline.savefig(paths[1])
    plots.tokens(runs, title="Tokens: legacy role prompts vs hybrid merged prompts").savefig(paths[2])
    plots.wall(runs, title="Where the wall time goes: legacy's stages wait for each other").savefig(paths[3])
    return paths


async def run_demo(
    *, out_dir: Path, time_scale: float = 0.1, seed: int = 7, virtual: bool = False, uvloop: bool = False
) -> int:
    """The ``hybrid demo`` command: measure, print the table, write the files."""
    if virtual:
        time_scale = 1.0
        print("Running the audit on a virtual clock at the model's full pace (simulator in-process)...", flush=True)
    else:
        print(f"Starting the simulator in its own process and running the audit (time scale {time_scale})...")
    legacy, hybrid, report = await measure(time_scale=time_scale, seed=seed, virtual=virtual, uvloop=uvloop)
    summary = scenario_summary(legacy, hybrid, time_scale=time_scale)
    summary["virtual"] = virtual
    summary["report_complete"] = report.complete
    summary["report_warnings"] = list(report.warnings)
    print()
    print(format_table(summary))
    print()
    print("Merged audit verdict:", report.report.get("verdict", "n/a"))
    for warning in report.warnings:
        print("warning:", warning)
    paths = write_outputs(out_dir, legacy, hybrid, summary)
    print("\nWrote:", *(f"  {p}" for p in paths), sep="\n")
    return 0
