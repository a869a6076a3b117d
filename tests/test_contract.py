"""The public API and the async rules, locked."""

from __future__ import annotations

import re
from pathlib import Path

import hybrid

PACKAGE = Path(hybrid.__file__).parent

PUBLIC = {
    "AllQueriesFailed",
    "AuthenticationFailed",
    "Backend",
    "BadRequest",
    "Cancelled",
    "Completion",
    "ConfigError",
    "ConnectionFailed",
    "DependencyFailed",
    "HTTPBackend",
    "HybridError",
    "InvalidResponse",
    "OpenAIBackend",
    "Orchestrator",
    "Price",
    "Query",
    "QueryError",
    "QueryFinished",
    "QueryResult",
    "QueryStarted",
    "QueryTimeout",
    "RateLimited",
    "Retry",
    "RunFinished",
    "RunMetrics",
    "RunResult",
    "ServerError",
    "TemplateError",
    "Usage",
    "__version__",
    "run_sync",
    "sim",
}


def test_public_api_is_exactly_what_init_exports() -> None:
    assert set(hybrid.__all__) == PUBLIC
    assert all(hasattr(hybrid, name) for name in hybrid.__all__)


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
