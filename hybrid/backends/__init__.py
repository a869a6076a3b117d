"""Backends: how a query is sent.  The orchestrator decides when and how many.

:class:`Backend` is the protocol (any object with its members will do); the two shipped backends
speak OpenAI's chat-completions protocol over HTTP.
"""

from hybrid.backends.http_backend import HTTPBackend
from hybrid.backends.openai_backend import OpenAIBackend
from hybrid.backends.protocol import Backend

__all__ = ["Backend", "HTTPBackend", "OpenAIBackend"]
