"""Backends: how a query is sent.  The orchestrator decides when and how many.

:class:`Backend` is the protocol (any object with its members will do); the two shipped backends
speak OpenAI's chat-completions protocol over HTTP.  Optional capabilities are protocols too: a
backend with ``batch_api()`` is :class:`SupportsBatch` (``mode="batch"``), one with ``forecast()``
and ``slots`` is :class:`SupportsForecast` (``orch.estimate`` asks it), one with an ``identity``
is :class:`SupportsIdentity` (the response cache keys answers by the server that gave them).
"""

from hybrid.backends.http_backend import HTTPBackend
from hybrid.backends.openai_backend import OpenAIBackend
from hybrid.backends.protocol import Backend, SupportsBatch, SupportsForecast, SupportsIdentity

__all__ = ["Backend", "HTTPBackend", "OpenAIBackend", "SupportsBatch", "SupportsForecast", "SupportsIdentity"]
