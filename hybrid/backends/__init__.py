"""Backends: how a query is sent.  The orchestrator decides when and how many."""

from hybrid.backends.base import Backend
from hybrid.backends.http_backend import HTTPBackend
from hybrid.backends.openai_backend import OpenAIBackend

__all__ = ["Backend", "HTTPBackend", "OpenAIBackend"]
