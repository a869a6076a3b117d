"""hybrid: fan LLM queries out with asyncio, measure the speedup honestly, and plot it.

The public API is exactly what this module re-exports (``__all__``).
"""

from hybrid import sim
from hybrid.backends import Backend, HTTPBackend, OpenAIBackend
from hybrid.errors import (
    AllQueriesFailed,
    AuthenticationFailed,
    BadRequest,
    Cancelled,
    ConfigError,
    ConnectionFailed,
    DependencyFailed,
    HybridError,
    InvalidResponse,
    QueryError,
    QueryTimeout,
    RateLimited,
    ServerError,
    TemplateError,
)
from hybrid.metrics import RunMetrics
from hybrid.notebook import run_sync
from hybrid.orchestrator import Orchestrator, QueryFinished, QueryStarted, RunFinished
from hybrid.query import Completion, Price, Query, QueryResult, Usage
from hybrid.results import RunResult
from hybrid.retry import Retry

__version__ = "0.1.0"

__all__ = [
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
]
