"""Where an OpenAI-compatible backend sends its requests: base URL, API key, model, and a check
that the host answers before anything is sent.

Both HTTP backends (:class:`~hybrid.backends.openai_backend.OpenAIBackend` and
:class:`~hybrid.backends.http_backend.HTTPBackend`) build on :class:`Endpoint`; a backend for
another protocol need not.  Settings come from the arguments or, like the ``openai`` SDK, from
``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` / ``OPENAI_MODEL`` when an argument is left out (None).
An *empty* argument is an error, never a fallback: ``base_url=os.getenv("LOCAL_URL", "")`` must
not silently send prompts (and the real key) to api.openai.com.

The API key lives only on the endpoint: ``repr`` hides it, and :meth:`Endpoint.redact` removes it
from any text a server sends back (a server that echoes the key in a 401 message).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import urllib.request
from dataclasses import replace
from typing import Any, TypedDict
from urllib.parse import SplitResult, urlsplit

from hybrid.backends.response_limits import DEFAULT_MAX_RESPONSE_BYTES
from hybrid.errors import ConfigError, check_int, check_text
from hybrid.query import Completion

#: How long :meth:`Endpoint.check_reachable` waits for a TCP connection.
REACHABILITY_TIMEOUT_S = 5.0
DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: Keys at least this long are scrubbed from answers (:meth:`Endpoint.scrubbed`).
MIN_SCRUBBED_KEY = 8
_REDACTED = "<redacted>"


def _setting(name: str, value: object, env: str, default: str | None = None) -> str | None:
    """An explicit value (must be a non-empty string), else the environment, else ``default``."""
    if value is None:
        return os.environ.get(env) or default
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r} ({type(value).__name__}).")
    if not value.strip():
        raise ConfigError(
            f"{name} is an empty string. Pass a real value, or leave it out (None) to read {env} from the environment."
        )
    return value.strip()


def endpoint_identity(url: SplitResult) -> str:
    """Which server a base URL reaches, as the response cache keys it: scheme, host and path.  The
    port is kept, except on a loopback host, where local servers (the simulator, llama.cpp, vLLM)
    come back on a free port after a restart and are still the same server."""
    host = url.hostname or ""
    loopback = host == "localhost" or _is_loopback_address(host)
    host = f"[{host}]" if ":" in host else host  # an IPv6 address, as a URL writes it
    where = host if loopback or url.port is None else f"{host}:{url.port}"
    return f"{url.scheme}://{where}{url.path.rstrip('/')}"


def _is_loopback_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class EndpointSettings(TypedDict, total=False):
    """:class:`Endpoint`'s constructor arguments, for backends that add their own beside them."""

    base_url: str | None
    api_key: str | None
    model: str | None
    check_reachable: bool
    max_response_bytes: int
    identity: str | None


class Endpoint:
    """An OpenAI-compatible endpoint: ``base_url``, ``model`` and a hidden API key.

    ``check_reachable`` (default True) makes :meth:`open` try one TCP connect first, so a wrong
    URL fails in the cell that opened it, with advice.  It is skipped when a proxy is configured
    for the host (``HTTPS_PROXY`` / ``HTTP_PROXY`` without a matching ``NO_PROXY``): the host may
    then be reachable only through the proxy.  Pass ``check_reachable=False`` to skip it always.
    """

    supports_threads = False
    #: Where a left-out setting comes from, like the provider's SDK (a backend for another provider
    #: names its own: ``ANTHROPIC_BASE_URL``, ...), and the base URL when none is set.
    base_url_env, api_key_env, model_env = "OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_MODEL"
    default_base_url = DEFAULT_BASE_URL

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        model: str | None = None,
        check_reachable: bool = True,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        identity: str | None = None,
    ) -> None:
        url = _setting("base_url", base_url, self.base_url_env, self.default_base_url)
        assert url is not None
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(
                f"base_url {url!r} is not a valid URL ({exc}); use e.g. http://127.0.0.1:8000/v1."
            ) from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"base_url {url!r} is not an http(s) URL; use e.g. http://127.0.0.1:8000/v1 "
                f"(the simulator's server.url) or set {self.base_url_env}."
            )
        if parts.username or parts.password:
            raise ConfigError("base_url must not hold credentials (user:password@); pass the key as api_key=.")
        # A missing key is refused when the backend opens, not here: a replay (cache="replay") never
        # opens it, so CI replays a recording with no key in its environment.
        key = _setting("api_key", api_key, self.api_key_env) or ""
        name = _setting("model", model, self.model_env)
        if not name:
            raise ConfigError(f"No model: pass model=... (e.g. 'sim-small' on the simulator) or set {self.model_env}.")
        self.base_url = url.rstrip("/")
        self._host = parts.hostname
        self._port = port or (443 if parts.scheme == "https" else 80)
        self._api_key = key
        self.model = name
        self.check_reachable = bool(check_reachable)
        self.max_response_bytes = check_int("max_response_bytes", max_response_bytes, minimum=1024)
        #: Which server answers, for the response cache (:func:`endpoint_identity`, or ``identity=``).
        chosen = check_text("identity", identity, optional=True)
        self.identity = chosen if chosen is not None else endpoint_identity(parts)
        self.max_connections = 100
        self.timeout: float | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, model={self.model!r}, api_key=<hidden>)"

    def recipe(self) -> dict[str, Any]:
        """The constructor's arguments, less the key: how ``mode="ray"`` rebuilds this backend in a
        worker (the key travels apart, masked)."""
        return {
            "base_url": self.base_url,
            "model": self.model,
            "check_reachable": self.check_reachable,
            "max_response_bytes": self.max_response_bytes,
            "identity": self.identity,
        }

    @property
    def key_hint(self) -> str:
        """The key as it may be shown (``hybrid doctor``): its first three and last four characters,
        all stars when it is too short to show any, or "none"."""
        key = self._api_key
        if not key:
            return "none"
        return "*" * len(key) if len(key) < 12 else f"{key[:3]}...{key[-4:]}"

    def redact(self, text: str) -> str:
        """``text`` with this endpoint's API key replaced (servers may echo it in error messages)."""
        return text.replace(self._api_key, _REDACTED) if self._api_key and self._api_key in text else text

    def scrubbed(self, completion: Completion) -> Completion:
        """``completion`` with this endpoint's key taken out of its text: a server that echoes the
        key in an answer must not get it stored, shown or exported.  A key shorter than
        :data:`MIN_SCRUBBED_KEY` characters (a test key such as ``"k"``) is no secret, and replacing
        it would cut letters out of every answer, so it is left alone."""
        if len(self._api_key) < MIN_SCRUBBED_KEY or self._api_key not in completion.text:
            return completion
        return replace(completion, text=self.redact(completion.text))

    def scrubbed_bytes(self, data: bytes) -> bytes:
        """:meth:`scrubbed` for a file the provider returns (a batch's output)."""
        key = self._api_key.encode()
        return data.replace(key, _REDACTED.encode()) if len(key) >= MIN_SCRUBBED_KEY else data

    async def open(self, *, max_connections: int = 100, query_timeout: float | None = None) -> None:
        """Remember the pool size and timeout, check the host answers, then make the client."""
        if not self._api_key:
            raise ConfigError(
                f"No API key: pass api_key=... or set {self.api_key_env} (for the embedded simulator use "
                "server.api_key)."
            )
        self.max_connections = max_connections
        self.timeout = query_timeout
        if self.check_reachable and not self._behind_proxy():
            await self._probe()
        await self._connect()

    def _behind_proxy(self) -> bool:
        scheme = "https" if self.base_url.startswith("https") else "http"
        proxies = urllib.request.getproxies()
        return scheme in proxies and not urllib.request.proxy_bypass(self._host)

    async def _probe(self) -> None:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(self._host, self._port), REACHABILITY_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise ConfigError(
                f"Cannot reach {self.base_url} ({exc.__class__.__name__}). Is the server running? "
                f"Start the simulator with `hybrid sim` or `sim.serve()`, or check {self.base_url_env} "
                "(behind a proxy the kit does not detect, pass check_reachable=False)."
            ) from None
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass

    async def _connect(self) -> None:
        raise NotImplementedError
