"""The public API and the async rules, locked."""

from __future__ import annotations

import ast
import graphlib
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import hybrid

PACKAGE = Path(hybrid.__file__).parent


def test_public_api_is_exactly_what_init_exports() -> None:
    """httpx's test_exported_members: every public name bound in hybrid/__init__.py is in __all__,
    and everything in __all__ resolves (lazy submodules included)."""
    helpers = {"annotations", "importlib", "version", "PackageNotFoundError", "TYPE_CHECKING", "Any"}
    helpers |= {"LAZY_SUBMODULES", "LAZY_NAMES"}
    bound = {
        name
        for name, value in vars(hybrid).items()
        if not name.startswith("_") and name not in helpers and not isinstance(value, types.ModuleType)
    }
    assert bound | set(hybrid.LAZY_SUBMODULES) | set(hybrid.LAZY_NAMES) == set(hybrid.__all__) - {"__version__"}
    assert all(getattr(hybrid, name) is not None for name in hybrid.__all__)
    assert set(dir(hybrid)) >= set(hybrid.__all__)


@pytest.mark.heavy
def test_tool_submodules_load_lazily() -> None:
    code = (
        "import sys, hybrid; assert 'hybrid.sim' not in sys.modules and 'hybrid.plots' not in sys.modules; "
        "assert hybrid.plots.timeline and 'hybrid.plots' in sys.modules; "
        "from importlib.metadata import version; assert hybrid.__version__ == version('hybrid-llm-kit')"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_error_is_rooted_at_hybrid_error() -> None:
    for name in hybrid.__all__:
        obj = getattr(hybrid, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, hybrid.HybridError), name


BRIDGING = re.compile(
    r"asyncio\.run\(|asyncio\.Runner\(|run_coroutine_threadsafe|run_until_complete|new_event_loop|nest_asyncio"
)
ALLOWED = {"notebook.py", "cli.py", "__main__.py", "sim/serve.py"}


def test_no_sync_bridging_inside_the_library() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in ALLOWED:
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if BRIDGING.search(line):
                offenders.append(f"hybrid/{relative}:{number}: {line.strip()}")
    assert offenders == [], "sync bridging outside the allowed edges:\n" + "\n".join(offenders)


def test_the_bridging_check_would_catch_a_violation() -> None:
    assert BRIDGING.search("    return asyncio.run(main())")
    assert BRIDGING.search("loop = asyncio.new_event_loop()")
    assert not BRIDGING.search("await asyncio.sleep(0)")


# -- layers ------------------------------------------------------------------------------------
# The parts ARCHITECTURE.md draws, and what each may import (type-only imports aside: they never run).
PARTS = {
    "face": {"cli", "__main__", "notebook", "virtual_time", "pytest_plugin"},
    "tools": {
        "bench",
        "plots",
        "demo",
        "calibrate",
        "real",
        "scenarios",
        "lab",
        "view",
        "testing",
        "doctor",
        "workload",
        "otel",
        "notebook_grid",
    },
    "scale": {"batch", "ray_shards"},
    "engine": {
        "orchestrator",
        "strategies",
        "run_state",
        "chain",
        "retry",
        "templating",
        "progress",
        "events",
        "estimate",
        "loop_watch",
        "live_run",
    },
    "store": {"store"},
    "model": {"query", "results", "metrics", "fingerprint", "validity", "pricing"},
    "backends": {"backends"},
    "sim": {"sim"},
    "base": {"errors", "tokens", "process", "provenance", "answer_sink"},
}
MAY_IMPORT = {
    "face": set(PARTS),
    "tools": set(PARTS) - {"face"},
    "scale": {"scale", "engine", "store", "model", "backends", "base"},
    "engine": {"engine", "model", "backends", "base"},  # and the store's public face, below
    "store": {"store", "model", "base"},
    "model": {"model", "base"},
    "backends": {"backends", "model", "base"},
    "sim": {"sim", "base"},
    "base": {"base"},
}
#: Tools may call these entry points: the two loop bridges.
BRIDGES = {"hybrid.notebook", "hybrid.virtual_time"}
#: Imports across the rules, each a documented seam.
SEAMS = {
    # The engine persists through the store's public face (Store, and the RunRecord it hands out),
    # as a user's code does; never through its modules.
    ("engine", "hybrid.store"),
    # ``sim.backend()`` builds a Simulator and hands it to the in-process client: the one place the
    # server and the client side meet (ARCHITECTURE.md, "One wire path").
    ("hybrid.sim", "hybrid.backends.in_process"),
}


def _part(module: str) -> str:
    top = module.split(".")[1]
    return next((part for part, tops in PARTS.items() if top in tops), "unplaced")


def layer_violations() -> list[str]:
    problems = []
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    known = set(files)
    for module, path in files.items():
        if module == "hybrid":
            continue  # the package root re-exports the core and names the lazy tools
        mine = _part(module)
        for imported in _runtime_imports(path, module, known):
            theirs = _part(imported)
            if mine == "unplaced" or theirs == "unplaced":
                problems.append(f"{module} or {imported} is in no part: add it to PARTS and ARCHITECTURE.md")
            elif theirs in MAY_IMPORT[mine] or (imported in BRIDGES and mine == "tools"):
                continue
            elif (mine, imported) in SEAMS or (module, imported) in SEAMS:
                continue
            else:
                problems.append(f"{module} ({mine}) imports {imported} ({theirs})")
    return sorted(set(problems))


def test_layers_are_respected() -> None:
    assert layer_violations() == []


def test_the_layer_check_would_catch_a_violation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "hybrid"
    (fake / "sim").mkdir(parents=True)
    (fake / "store").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "plots.py").write_text("")
    (fake / "batch.py").write_text("")
    (fake / "store" / "__init__.py").write_text("")
    (fake / "store" / "record.py").write_text("")
    (fake / "orchestrator.py").write_text(
        "from hybrid.plots import timeline\nfrom hybrid.store import Store\nfrom hybrid.store.record import R\n"
    )
    (fake / "strategies.py").write_text("def f():\n    from hybrid.batch import Batch\n")
    (fake / "sim" / "engine.py").write_text("def f():\n    from hybrid.orchestrator import Orchestrator\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert layer_violations() == [
        "hybrid.orchestrator (engine) imports hybrid.plots (tools)",
        "hybrid.orchestrator (engine) imports hybrid.store.record (store)",
        "hybrid.sim.engine (sim) imports hybrid.orchestrator (engine)",
        "hybrid.strategies (engine) imports hybrid.batch (scale)",
    ]


# -- no import cycle ---------------------------------------------------------------------------
def _runtime_imports(path: Path, module: str, known: set[str]) -> set[str]:
    """The kit's modules ``path`` imports when it runs (lazy imports included; imports under
    ``if TYPE_CHECKING:`` are for type checkers only and left out), each as the module it names."""

    def named(name: str) -> str:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name

    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hybrid"):
            base = node.module or ""
            found.update(
                named(f"{base}.{alias.name}") if f"{base}.{alias.name}" in known else named(base)
                for alias in node.names
            )
        elif isinstance(node, ast.Import):
            found.update(named(alias.name) for alias in node.names if alias.name.startswith("hybrid"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found - {module, "hybrid"}


def test_the_package_has_no_import_cycle() -> None:
    """An import circle (A imports B imports A) means two modules that are really one, or a core
    that knows its rings; ``graphlib`` finds one if there is any."""
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    known = set(files)
    graph = {module: _runtime_imports(path, module, known) for module, path in files.items()}
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as cycle:
        pytest.fail(f"import cycle: {' -> '.join(cycle.args[1])}")


def test_optional_backend_capabilities_are_protocols() -> None:
    """``mode="batch"`` and ``orch.estimate`` ask a backend what it can do with ``isinstance``
    against a protocol, never by probing for attributes."""
    from hybrid import HTTPBackend, OpenAIBackend, sim
    from hybrid.backends import SupportsBatch, SupportsForecast

    endpoint = {"base_url": "http://127.0.0.1:9/v1", "api_key": "k", "model": "m", "check_reachable": False}
    assert isinstance(OpenAIBackend(**endpoint), SupportsBatch)
    assert not isinstance(HTTPBackend(**endpoint), SupportsBatch | SupportsForecast)
    assert isinstance(sim.backend(), SupportsBatch) and isinstance(sim.backend(), SupportsForecast)
    probes = [p for p in ("estimate.py", "backends/batch_api.py") if "getattr(" in (PACKAGE / p).read_text()]
    assert probes == []
