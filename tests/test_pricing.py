"""Prices: genai-prices' bundled table by default for a provider the base URL names, the user's
``Price`` over it, none for a local server, and every price saying where it came from."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import genai_prices
import pytest
import pytest_socket

from hybrid import ConfigError, Orchestrator, Price, Query, Store
from hybrid.cli import main as cli_main
from hybrid.pricing import PriceBook, is_local, table_price
from hybrid.query import Usage
from hybrid.testing import Answer, FakeBackend

pytestmark = pytest.mark.looptime

OPENAI = "https://api.openai.com/v1"
MINI = "gpt-4o-mini"


@pytest.fixture(autouse=True)
def _offline() -> Iterator[None]:
    """The table is the installed package's copy: a lookup never opens a socket."""
    pytest_socket.disable_socket(allow_unix_socket=True)
    yield
    pytest_socket.enable_socket()


class ProviderBackend(FakeBackend):
    """The fake backend, claiming to reach a provider's API (prices look at ``base_url`` only)."""

    def __init__(self, base_url: str, model: str, answer: Answer) -> None:
        super().__init__(default=answer, model=model)
        self.base_url = base_url


def genai_figure(usage: Usage, model: str, url: str) -> float:
    """What genai-prices itself says these tokens cost."""
    figure = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=usage.prompt_tokens,
            cache_read_tokens=usage.cached_prompt_tokens,
            output_tokens=usage.completion_tokens,
        ),
        model,
        provider_api_url=url,
    )
    return float(figure.total_price)


@pytest.mark.parametrize(
    ("url", "model"),
    [(OPENAI, MINI), (OPENAI, "gpt-4.1"), ("https://api.anthropic.com/v1", "claude-3-5-haiku-latest")],
)
def test_a_known_models_cost_matches_genai_prices_figure(url: str, model: str) -> None:
    usage = Usage(prompt_tokens=12_345, completion_tokens=678, cached_prompt_tokens=2_000)
    price = PriceBook(None, url)[model]
    assert price.cost(usage) == pytest.approx(genai_figure(usage, model, url), rel=1e-9)
    assert price.source.startswith(f"genai-prices {genai_prices.__version__}: ")
    assert datetime.now(tz=UTC).date().isoformat() in price.source


def test_the_users_price_wins_and_says_so() -> None:
    mine = Price(prompt_per_mtok=1.0, completion_per_mtok=2.0)
    book = PriceBook({MINI: mine}, OPENAI)
    assert book[MINI] is mine and book.sources([MINI]) == {MINI: "your prices="}
    assert "gpt-4.1" in book and list(book) == [MINI, "gpt-4.1"]  # looked up, then listed


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/v1",  # vLLM, llama.cpp
        "http://localhost:11434/v1",  # Ollama
        "http://10.1.2.3:8000/v1",
        "http://gpu-box:8000/v1",
        "http://[::1]:8000/v1",
        "http://in-process.invalid/v1",  # sim.backend()
    ],
)
def test_a_local_server_serving_a_providers_model_gets_no_price(url: str) -> None:
    assert is_local(url)
    book = PriceBook(None, url)
    assert MINI not in book and len(book) == 0
    with pytest.raises(KeyError):
        book[MINI]
    assert "private network" in book.why_none(MINI)


def test_an_unknown_provider_or_model_gets_no_price() -> None:
    assert table_price(MINI, "https://llm.example.com/v1") is None
    assert table_price("no-such-model-xyz", OPENAI) is None
    assert not is_local("https://api.openai.com/v1")


async def test_a_run_at_a_provider_is_priced_from_the_table_and_keeps_where_from(tmp_path: Path) -> None:
    backend = ProviderBackend(OPENAI, MINI, Answer("fine", prompt_tokens=1000, completion_tokens=100, delay=1.0))
    path = tmp_path / "runs.sqlite"
    with Store(path) as store:
        async with Orchestrator(backend, store=store) as orch:
            forecast = orch.estimate([Query("q", "x" * 400, max_tokens=100)])
            run = await orch.run([Query("q1", "hi"), Query("q2", "there")], name="priced")
        loaded = store.load("priced")
    usage = Usage(prompt_tokens=1000, completion_tokens=100)
    assert [r.cost_usd for r in run.results] == pytest.approx([genai_figure(usage, MINI, OPENAI)] * 2)
    source = PriceBook(None, OPENAI)[MINI].source
    assert run.prices == {MINI: source} and loaded.prices == run.prices
    assert forecast.queries["price_source"].tolist() == [source] and forecast.prices == {MINI: source}
    assert f"prices: {MINI}: {source}" in repr(forecast)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(["runs", "--store", str(path), "show", "priced"]) == 0
    assert f"price of {MINI}: {source}" in out.getvalue()


async def test_a_budget_at_a_provider_needs_no_prices_but_refuses_an_unlisted_model() -> None:
    backend = ProviderBackend(OPENAI, MINI, Answer("fine", completion_tokens=10, delay=1.0))
    async with Orchestrator(backend, budget_usd=0.01) as orch:
        run = await orch.run([Query("q", "hi", max_tokens=10)])
        assert run.ok and run.metrics.budget is not None and run.metrics.budget.spent_usd > 0
        with pytest.raises(ConfigError, match=r"genai-prices .* does not list it for https://api\.openai\.com/v1"):
            await orch.run([Query("q", "hi", max_tokens=10, model="my-finetune")])
        over = await orch.run([Query("big", "hi", max_tokens=100_000)], raise_if_all_failed=False)
    assert len(backend.calls) == 1
    error = over.results[0].error
    assert error is not None and error.kind == "budget"
    assert f"priced from {PriceBook(None, OPENAI)[MINI].source}" in str(error)
