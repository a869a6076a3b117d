"""Where a server writes one answer: the one type the simulator and the in-process client share.

The simulator answers a request into a :class:`Sink` whatever carries it: an aiohttp response, a
raw socket (``sim/lean_http.py``), or, with no transport at all, the in-process client
(``backends/in_process.py``), which reads the very bytes a socket would have carried.  So the
simulator never imports the client side, nor the client the simulator: both know only this.
"""

from __future__ import annotations

from typing import Protocol


class Sink(Protocol):
    """One answer as a server writes it: whole, or a head then parts then the end."""

    async def whole(self, body: bytes, headers: dict[str, str], status: int = 200) -> None:
        """A complete answer (an error body with its status)."""

    async def start(self, headers: dict[str, str], content_type: str, content_length: int | None = None) -> None:
        """Begin an answer sent in parts (status 200)."""

    async def write(self, data: bytes) -> None:
        """One part: a JSON fragment, or one server-sent event."""

    async def finish(self) -> None:
        """The answer is complete."""
