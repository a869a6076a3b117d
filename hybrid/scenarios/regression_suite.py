"""A small prompt suite with a gate per case, recorded once against a real model and replayed in CI.

Four checks a small model meets always, often or seldom.  Gemma 3 270M (a base model, at
temperature 0.8) answers in words every time, keeps to the question's topic most of the time (about
83% of samples repeat "capital"), names Paris in about one sample in six and never adds 17 + 25:
an honest mix of pass, fail and "not sure" for the gates.
Each case's gate is :func:`hybrid.lab.decide` at ``MIN_PASS``: repeats are sent until the
sequential test says pass or fail, or ``MAX_REPEATS`` run out (inconclusive).

``make record-real`` runs :func:`record_real`: llama.cpp's server with Gemma (the ``real`` extra),
every answer recorded into a store, the verdicts written beside it as JSON.  Both files are
committed.  ``make test`` replays the recording with no model, no server and no network socket
(:func:`replay_backend`, ``cache="replay"``) and checks that every gate gives the recorded verdict.

    python -m hybrid.scenarios.regression_suite --store notebooks/recordings/gemma_suite.sqlite           # record
    python -m hybrid.scenarios.regression_suite --store notebooks/recordings/gemma_suite.sqlite --replay  # check
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from hybrid import lab
from hybrid.backends import HTTPBackend
from hybrid.lab.gates import Gate
from hybrid.lab.scorers import Scorer
from hybrid.notebook import run_sync
from hybrid.orchestrator import Orchestrator
from hybrid.query import Query
from hybrid.store import Store

MIN_PASS = 0.8
MAX_REPEATS = 16
#: The model name llama.cpp's server answers to (:data:`hybrid.real.MODEL_ALIAS`; repeated here so
#: a replay needs nothing of the real extra).
MODEL = "gemma3-270m"
#: Where a replay points: nothing listens there, and nothing is sent.  On loopback the port is not
#: part of the server's identity, so this matches a recording made on any local port.
REPLAY_URL = "http://127.0.0.1:8080/v1"

CASES: dict[str, tuple[str, Scorer]] = {
    "answers_in_words": ("What is the capital of France?", lab.regex(r"[A-Za-z]{3}")),
    "stays_on_topic": ("What is the capital of France?", lab.contains("capital")),
    "names_paris": ("What is the capital of France?", lab.contains("Paris")),
    "adds_numbers": ("What is 17 + 25?", lab.contains("42")),
}


def query(case: str) -> Query:
    """The case's query (each repeat is a sample of it, see :func:`~hybrid.lab.decide`)."""
    prompt, _ = CASES[case]
    return Query(case, prompt, max_tokens=12, temperature=0.8, metadata={"case": case})


async def gates(orch: Orchestrator) -> dict[str, Gate]:
    """Each case's gate, decided one case after another."""
    return {
        case: await lab.decide(orch, [query(case)], scorer, min_pass=MIN_PASS, max_repeats=MAX_REPEATS)
        for case, (_, scorer) in CASES.items()
    }


def verdicts(decided: dict[str, Gate]) -> dict[str, dict[str, object]]:
    """What a replay must reproduce: each case's verdict, samples used and pass rate."""
    return {case: {"verdict": g.verdict, "n": g.n, "rate": g.rate} for case, g in decided.items()}


def replay_backend() -> HTTPBackend:
    """A backend for replaying the recording: the recorded server's identity and model, no key."""
    return HTTPBackend(base_url=REPLAY_URL, model=MODEL, check_reachable=False)


async def keep_suite_run(orch: Orchestrator, store: Store, decided: dict[str, Gate], name: str = "suite") -> None:
    """Every sample the gates used, as one run ``name`` with its scores kept (all answered from the
    cache): what ``hybrid report suite --store ...`` reads."""
    samples = [replace(query(case), sample=s) for case, g in decided.items() for s in range(g.n)]
    run = await orch.run(samples, name=name, raise_if_all_failed=False)
    for case, (_, scorer) in CASES.items():  # each case's rows by its own scorer, kept with the run
        rows = tuple(r for r in run.results if r.name == case)
        await lab.score(replace(run, results=rows), [scorer], store=store, name=name)


async def record_real(store_path: Path) -> dict[str, dict[str, object]]:
    """Record the suite against Gemma 3 270M on llama.cpp into ``store_path``, keep its samples as
    the run ``suite``, and write the verdicts beside it (``<store>.verdicts.json``)."""
    from hybrid import real

    with Store(store_path) as store:
        async with real.serve() as server:
            backend = HTTPBackend(base_url=server.url, api_key=server.api_key, model=server.model)
            async with Orchestrator(backend, store=store, cache="record", max_concurrency=8, progress=False) as orch:
                decided = await gates(orch)
                await keep_suite_run(orch, store, decided)
    found = verdicts(decided)
    verdicts_path(store_path).write_text(json.dumps(found, indent=2) + "\n")
    return found


async def replay(store_path: Path) -> dict[str, dict[str, object]]:
    """Replay the recording at ``store_path`` from a copy (a replay adds runs of its own; the
    committed file stays as it is): each case's gate again, from the recorded answers."""
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / store_path.name
        shutil.copy(store_path, copy)
        with Store(copy) as store:
            async with Orchestrator(replay_backend(), store=store, cache="replay", progress=False) as orch:
                return verdicts(await gates(orch))


def verdicts_path(store_path: Path) -> Path:
    return store_path.with_name(store_path.stem + ".verdicts.json")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Record the regression suite against Gemma 3 270M, or replay it.")
    parser.add_argument("--store", type=Path, required=True, help="the store holding the recording (committed)")
    parser.add_argument("--replay", action="store_true", help="replay it offline (no model, no network, no key)")
    args = parser.parse_args()
    if args.replay:
        recorded = json.loads(verdicts_path(args.store).read_text())
        replayed = run_sync(replay(args.store))
        for case, outcome in replayed.items():
            same = "same as recorded" if outcome["verdict"] == recorded[case]["verdict"] else "RECORDED DIFFERENTLY"
            print(f"{case:17} {outcome['verdict']:12} after {outcome['n']:2} samples ({same})")
        raise SystemExit(0 if all(replayed[c]["verdict"] == recorded[c]["verdict"] for c in recorded) else 1)
    for case, outcome in run_sync(record_real(args.store)).items():
        print(f"{case}: {outcome}")
