"""What ``mode="batch"`` needs of a backend: a provider's Batch API (files in, a batch, files out).

OpenAI's shape, which Anthropic's message batches and most OpenAI-compatible servers follow:
upload a JSONL file (``purpose="batch"``), create a batch on it, retrieve the batch object until
it ends, download its output and error files, cancel it.  Batch objects travel as plain dicts in
OpenAI's JSON shape (``status``, ``request_counts``, ``output_file_id``, ``error_file_id``,
``errors``), whatever the backend, so :mod:`hybrid.batch` reads one format.

A backend offers it with a ``batch_api()`` method returning a :class:`BatchAPI`;
``OpenAIBackend`` does, through the SDK's ``files`` and ``batches`` resources (:class:`SDKBatchAPI`),
and so does the in-process simulator.  Every failure is a :class:`~hybrid.errors.QueryError`, as
in ``complete``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from hybrid.backends.protocol import SupportsBatch
from hybrid.errors import ConfigError, QueryError

if TYPE_CHECKING:
    import openai

T = TypeVar("T")

#: The largest result file the kit downloads (OpenAI's input limit is 200 MB; outputs are larger).
MAX_FILE_BYTES = 1 << 30


class BatchAPI(Protocol):
    """A provider's Batch API (see the module docstring)."""

    async def upload(self, data: bytes, filename: str) -> str:
        """Upload a JSONL file for a batch; its file id."""

    async def create(self, input_file_id: str, metadata: dict[str, str]) -> dict[str, Any]:
        """Start a batch of chat completions on ``input_file_id`` (24 h window); the batch object."""

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        """The batch object as it stands."""

    async def content(self, file_id: str) -> bytes:
        """A file's bytes (a batch's output or error file)."""

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        """Ask the provider to stop the batch; lines done so far still come back in its output."""


def check_batch_api(backend: object) -> SupportsBatch:
    """``backend``, if it has a Batch API, else a :class:`ConfigError` saying which backend has one
    (without making the API's client: a replay never needs one)."""
    if not isinstance(backend, SupportsBatch):
        raise ConfigError(
            f"mode='batch' needs a backend with the provider's Batch API; {type(backend).__name__} has none. "
            "Use OpenAIBackend (the SDK's files and batches) or sim.backend(...)."
        )
    return backend


def batch_api_of(backend: object) -> BatchAPI:
    """``backend``'s Batch API, or a :class:`ConfigError` saying which backend has one."""
    return check_batch_api(backend).batch_api()


class SDKBatchAPI:
    """:class:`BatchAPI` through the official SDK.  It has a client of its own, whose response
    meter allows files up to :data:`MAX_FILE_BYTES` (chat answers keep the backend's smaller cap)."""

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        translate: Callable[[Exception], QueryError],
        scrubbed: Callable[[bytes], bytes],
    ) -> None:
        self.client = client
        self._translated = translate
        self._scrubbed = scrubbed  # the key out of a result file (a server may echo it in answers)

    async def _sdk(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except Exception as exc:
            raise self._translated(exc) from None

    async def upload(self, data: bytes, filename: str) -> str:
        return (await self._sdk(self.client.files.create(file=(filename, data), purpose="batch"))).id

    async def create(self, input_file_id: str, metadata: dict[str, str]) -> dict[str, Any]:
        batch = await self._sdk(
            self.client.batches.create(
                input_file_id=input_file_id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata=metadata,
            )
        )
        return batch.model_dump()

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return (await self._sdk(self.client.batches.retrieve(batch_id))).model_dump()

    async def content(self, file_id: str) -> bytes:
        return self._scrubbed((await self._sdk(self.client.files.content(file_id))).content)

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        return (await self._sdk(self.client.batches.cancel(batch_id))).model_dump()
