"""Which price each model is charged at: the user's ``prices=``, else the table `genai-prices`_ ships.

Users used to type every price in (``Price(...)``).  `genai-prices` (Pydantic's maintained table of
providers, models and their dated prices, cache reads included) knows them; the kit uses the copy
bundled with the installed package only, never a download at run time, so a run's cost depends on
nothing but the installed version.

A :class:`PriceBook` is what an orchestrator reads prices from.  For a model it answers, in order:

1. the user's ``Price`` for that name (``prices={"gpt-4o-mini": Price(...)}``): an override always wins;
2. the table's price, when the base URL names a provider the table knows (its API-URL patterns:
   ``api.openai.com``, ``*.openai.azure.com``, ``api.anthropic.com``, ...) and that provider lists the
   model, at today's date (a price that changed on a date is taken as it stands today);
3. nothing: a server on this machine or a private network (vLLM, Ollama, llama.cpp, the
   simulator) costs what its owner pays, not a provider's list price, even when the model it serves
   has a provider's name; so it gets no price, and the run's cost is unknown (None), as before.

Every price says where it came from (:attr:`Price.source`); runs keep it per model
(``RunResult.prices``), and ``orch.estimate``, budget refusals, ``hybrid runs show``, the viewer and
``hybrid report`` show it.

.. _genai-prices: https://github.com/pydantic/genai-prices
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from importlib.metadata import version
from typing import Any
from urllib.parse import urlsplit

from hybrid.errors import ConfigError
from hybrid.process import IN_PROCESS_URLS
from hybrid.query import Price

#: Host name endings that never reach a provider: mDNS, reserved (RFC 2606) and internal names.
_PRIVATE_SUFFIXES = (".local", ".localhost", ".invalid", ".internal", ".test")


class PriceBook(Mapping[str, Price]):
    """The prices of one orchestrator's models (see the module docstring), looked up once per model.

    A mapping of the models priced so far: ``model in book`` and ``book[model]`` look ``model`` up
    (``KeyError`` when it has no price), iteration lists the models given or found."""

    def __init__(self, given: Mapping[str, Price] | None, base_url: str | None) -> None:
        self._found: dict[str, Price | None] = dict(given or {})
        for model, price in self._found.items():
            if not isinstance(price, Price):
                raise ConfigError(
                    f"prices[{model!r}] must be a Price(prompt_per_mtok=..., completion_per_mtok=...), got {price!r}."
                )
        #: The base URL a table lookup matches providers against; None: no lookup (a local server).
        self.provider_url = base_url if base_url is not None and not is_local(base_url) else None

    def __getitem__(self, model: str) -> Price:
        if model not in self._found:
            self._found[model] = None if self.provider_url is None else table_price(model, self.provider_url)
        price = self._found[model]
        if price is None:
            raise KeyError(model)
        return price

    def __contains__(self, model: object) -> bool:
        if not isinstance(model, str):
            return False
        try:
            self[model]
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter([model for model, price in self._found.items() if price is not None])

    def __len__(self) -> int:
        return sum(price is not None for price in self._found.values())

    def sources(self, models: Iterable[str]) -> dict[str, str]:
        """Where the price of each of ``models`` came from, for those that have one."""
        return {model: self[model].source for model in dict.fromkeys(models) if model in self}

    def why_none(self, model: str) -> str:
        """Why ``model`` has no price, and what to do, for an error message."""
        if self.provider_url is None:
            return (
                f"model {model!r} has no price: pass prices={{{model!r}: Price(prompt_per_mtok=..., "
                "completion_per_mtok=...)}} (a server on this machine or a private network gets no list price)."
            )
        return (
            f"model {model!r} has no price: genai-prices {_table_version()} does not list it for "
            f"{self.provider_url}; pass prices={{{model!r}: Price(prompt_per_mtok=..., completion_per_mtok=...)}}."
        )


def is_local(base_url: str) -> bool:
    """Whether ``base_url`` reaches a server in this process, on this machine or on a private
    network (loopback, RFC 1918, link-local, a name without a dot): no provider's list price applies."""
    if base_url in IN_PROCESS_URLS:
        return True
    host = urlsplit(base_url).hostname or ""
    if host == "localhost" or host.endswith(_PRIVATE_SUFFIXES) or ("." not in host and ":" not in host):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local


def table_price(model: str, base_url: str, *, on: datetime | None = None) -> Price | None:
    """genai-prices' price of ``model`` at the provider ``base_url`` names, as it stands ``on`` (now);
    None when the table knows no such provider or model."""
    from genai_prices import data_snapshot

    when = on or datetime.now(tz=UTC)
    try:
        provider, info = data_snapshot.get_snapshot().find_provider_model(model, None, None, base_url)
    except LookupError:
        return None
    listed = info.get_prices(when)
    prompt, completion = _per_mtok(listed, "input_mtok"), _per_mtok(listed, "output_mtok")
    if prompt is None or completion is None:
        return None
    return Price(
        prompt_per_mtok=prompt,
        completion_per_mtok=completion,
        cached_prompt_per_mtok=_per_mtok(listed, "cache_read_mtok"),
        source=f"genai-prices {_table_version()}: {provider.id} {info.id}, as of {when.date().isoformat()}",
    )


def _per_mtok(listed: Any, name: str) -> float | None:
    """One rate of a genai-prices ``ModelPrice`` in dollars per million tokens; a tiered rate's base
    tier (the rate below its first threshold, e.g. Gemini's 200k-token prompts)."""
    value = getattr(listed, name, None)
    if value is None:
        return None
    if not isinstance(value, Decimal):
        value = value.base
    return float(value)


def _table_version() -> str:
    return version("genai-prices")
