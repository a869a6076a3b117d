"""hybrid: fan LLM queries out with asyncio, measure the speedup honestly, and plot it.

The public API is exactly what this module re-exports (``__all__``): the core, eagerly.  The
tool submodules (``sim``, ``plots``, ``bench``, ``real``, ``testing``) load on first attribute access
(PEP 562), so ``import hybrid; hybrid.plots.timeline(run)`` works while ``import hybrid`` stays
cheap and users of real endpoints never load the simulator.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from hybrid.backends import Backend, HTTPBackend, OpenAIBackend
from hybrid.batch import Batch
from hybrid.errors import (
    AllQueriesFailed,
    AuthenticationFailed,
    BadRequest,
    BatchIncomplete,
    BudgetExceeded,
    Cancelled,
    ConfigError,
    ConnectionFailed,
    DependencyFailed,
    HybridError,
    InvalidResponse,
    NotRecorded,
    QueryError,
    QueryTimeout,
    RateLimited,
    ServerError,
    TemplateError,
)
from hybrid.events import QueryFinished, QueryProgress, QueryStarted, RunFinished
from hybrid.metrics import RunMetrics
from hybrid.notebook import run_sync
from hybrid.orchestrator import Orchestrator
from hybrid.query import Completion, Price, Query, QueryResult, ServerReport, Usage
from hybrid.ray_shards import RayShards
from hybrid.results import RunResult
from hybrid.retry import Retry
from hybrid.store import Store
from hybrid.virtual_time import simulate

if TYPE_CHECKING:
    from hybrid import bench, lab, plots, real, sim, testing, view, workload

try:
    __version__ = version("hybrid-llm-kit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# A library logs, the application decides where it goes: without this, Python's last-resort handler
# prints the kit's warnings (e.g. "2 of 6 queries failed") to stderr, a red box in a notebook that
# looks like a crash.  The same facts are on the run (``run.warnings``, the rows' errors).
logging.getLogger("hybrid").addHandler(logging.NullHandler())

#: Submodules loaded on first access.
LAZY_SUBMODULES = ("bench", "lab", "plots", "real", "sim", "testing", "view", "workload")
#: Classes that need an optional extra, imported on first use (``hybrid.AnthropicBackend``: ``anthropic``).
LAZY_NAMES = {"AnthropicBackend": "hybrid.backends.anthropic_backend"}

__all__ = [
    "AllQueriesFailed",
    "AnthropicBackend",
    "AuthenticationFailed",
    "Backend",
    "BadRequest",
    "Batch",
    "BatchIncomplete",
    "BudgetExceeded",
    "Cancelled",
    "Completion",
    "ConfigError",
    "ConnectionFailed",
    "DependencyFailed",
    "HTTPBackend",
    "HybridError",
    "InvalidResponse",
    "NotRecorded",
    "OpenAIBackend",
    "Orchestrator",
    "Price",
    "Query",
    "QueryError",
    "QueryFinished",
    "QueryProgress",
    "QueryResult",
    "QueryStarted",
    "QueryTimeout",
    "RateLimited",
    "RayShards",
    "Retry",
    "RunFinished",
    "RunMetrics",
    "RunResult",
    "ServerError",
    "ServerReport",
    "Store",
    "TemplateError",
    "Usage",
    "__version__",
    "bench",
    "lab",
    "plots",
    "real",
    "run_sync",
    "sim",
    "simulate",
    "testing",
    "view",
    "workload",
]


def __getattr__(name: str) -> Any:
    if name in LAZY_SUBMODULES:
        return importlib.import_module(f"hybrid.{name}")
    if name in LAZY_NAMES:
        return getattr(importlib.import_module(LAZY_NAMES[name]), name)
    raise AttributeError(f"module 'hybrid' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
