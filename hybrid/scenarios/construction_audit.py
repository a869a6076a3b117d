"""The seeds' study as data plus a few functions: a construction-project audit, legacy vs hybrid.

*Legacy* asks six role prompts in three stages — the document validator first; the structural
engineer, concrete specialist, cost estimator and planner in parallel on a thread pool; the
standards checker last, reading everyone's findings.  Each prompt repeats the reviewer preamble and
the whole tender document, and later stages carry earlier answers, so tokens pile up.

*Hybrid* asks two merged prompts (a comprehensive analysis; compliance and risks) over a compact
structured summary of the same project, gathered concurrently, then merges the two answers.

The simulator profile ``audit-large`` (0.5 s to first token, 800 prompt and 15 completion tokens/s,
a slow large model) makes tokens drive latency, so the token saving shows up in time as in the seeds.
To build your own study, copy this file and its JSON: prompts, replies and the merge are all here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from hybrid.errors import HybridError
from hybrid.query import Price, Query
from hybrid.results import RunResult
from hybrid.sim.config import PROFILES, ModelProfile, Script, SimConfig

log = logging.getLogger("hybrid.scenarios")

MODEL = "audit-large"
PROFILE = ModelProfile(ttft_s=0.5, prompt_tps=800.0, completion_tps=15.0, jitter=0.05)
#: Illustrative list prices of a large hosted model, USD per million tokens.
PRICES = {MODEL: Price(prompt_per_mtok=2.50, completion_per_mtok=10.00)}

LEGACY_STAGES = (("validator",), ("structural", "concrete", "cost", "schedule"), ("standards",))
HYBRID_NAMES = ("analysis", "compliance")


class AuditFailed(HybridError):
    """Both hybrid queries failed: there is nothing to report."""


@cache
def data() -> dict[str, Any]:
    """The scenario's data: project, tender document, role prompts, scripted replies."""
    text = resources.files("hybrid.scenarios").joinpath("construction_audit.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _marker(name: str) -> str:
    """A tag in each prompt that the simulator's scripts match to pick the role's reply."""
    return f"[audit:{name}]"


def compact_project() -> str:
    """The project as compact JSON: what the hybrid prompts send instead of the full document."""
    return json.dumps(data()["project"], separators=(",", ":"))


def legacy_stages(model: str = MODEL) -> list[list[Query]]:
    """The legacy 1 -> 4 -> 1 role prompts; later stages quote earlier answers via ``{{name}}``."""
    d = data()

    def role(name: str, extra: str = "") -> Query:
        r = d["roles"][name]
        prompt = (
            f"{_marker(name)} {d['legacy_preamble']}\n\nYour role: {r['title']}. {r['task']}\n\n"
            f"Tender document:\n{d['document']}{extra}"
        )
        return Query(name, prompt, model=model, json_mode=True, metadata={"role": r["title"]})

    validation = "\n\nDocument validator's findings:\n{{validator}}"
    specialists = "".join(f"\n\n{d['roles'][n]['title']}'s findings:\n{{{{{n}}}}}" for n in LEGACY_STAGES[1])
    return [
        [role("validator")],
        [role(name, validation) for name in LEGACY_STAGES[1]],
        [role("standards", validation + specialists)],
    ]


def hybrid_queries(model: str = MODEL) -> list[Query]:
    """The two merged prompts, over the compact project summary."""
    d = data()
    return [
        Query(
            name,
            f"{_marker(name)} {d['hybrid'][name]['task']}\n\nProject:\n{compact_project()}",
            model=model,
            json_mode=True,
            metadata={"role": d["hybrid"][name]["title"]},
        )
        for name in HYBRID_NAMES
    ]


def sim_config(*, seed: int = 7, time_scale: float = 0.1) -> SimConfig:
    """A simulator that answers every role with its scripted audit reply, at the scenario's pace."""
    scripts = tuple(
        Script(pattern=_marker(name).replace("[", r"\[").replace("]", r"\]"), reply=reply)
        for name, reply in data()["replies"].items()
    )
    return SimConfig(seed=seed, time_scale=time_scale, profiles={**PROFILES, MODEL: PROFILE}, scripts=scripts)


#: What the report says for a part whose query failed.
DEFAULTS: dict[str, dict[str, Any]] = {
    "analysis": {"completeness": [], "structure": [], "concrete": [], "costs": [], "schedule": []},
    "compliance": {"compliance": [], "risks": [], "verdict": "unknown: the compliance check failed"},
}


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditReport:
    """The merged hybrid answer: one dict of findings, and warnings naming any part that failed."""

    report: dict[str, Any]
    warnings: tuple[str, ...]
    complete: bool


def merge_report(run: RunResult) -> AuditReport:
    """Merge the two hybrid answers, as the seeds did.

    Both ok: one combined report.  One failed: the other's data, defaults for the missing part, and a
    warning naming it.  Both failed: :class:`AuditFailed`.
    """
    report: dict[str, Any] = {}
    warnings: list[str] = []
    for name in HYBRID_NAMES:
        result = run[name]
        parsed = _parse(result.text) if result.ok else None
        if parsed is None:
            reason = result.error if result.error is not None else "its answer is not a JSON object"
            warnings.append(f"The {name} query failed ({reason}); its part of the report uses defaults.")
            report.update(DEFAULTS[name])
        else:
            report.update(parsed)
    if len(warnings) == len(HYBRID_NAMES):
        raise AuditFailed("Both hybrid queries failed; no audit can be reported. " + " ".join(warnings))
    for warning in warnings:
        log.warning(warning)
    return AuditReport(report=report, warnings=tuple(warnings), complete=not warnings)


def _parse(text: str | None) -> dict[str, Any] | None:
    try:
        value = json.loads(text or "")
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
