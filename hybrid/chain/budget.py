"""A hard budget, a link of the call chain: no attempt is sent that could take the run past ``budget_usd``.

Before each attempt the link reserves the attempt's worst case, its prompt (the kit's token rule)
plus ``max_tokens`` at the model's price; if what was spent plus what is reserved plus this
attempt would pass the budget, the attempt is not sent and the query's row gets a
:class:`~hybrid.errors.BudgetExceeded` error (kind ``budget``).  After the attempt the reservation
is replaced by the real cost from the usage the server reported (cached prompt tokens at their
own price); an attempt sent through a Batch API (``Attempt.batch``) is reserved and paid at the
batch price.  Because the reservation is taken before sending, concurrency cannot overshoot: at
any moment, spent plus reserved stays within the budget.  A cache hit never reaches this link
(the cache comes first in the chain), so it costs nothing.

The orchestrator checks before anything is sent that every query has ``max_tokens`` and a price,
since without them the worst case is unbounded.
"""

from __future__ import annotations

from collections.abc import Mapping

from hybrid.chain import Attempt, Next
from hybrid.errors import BudgetExceeded
from hybrid.query import Completion, Price, Query, Usage
from hybrid.tokens import count_message_tokens


class Budget:
    """The budget link (see the module docstring); ``spent_usd`` is what the attempts so far cost."""

    def __init__(self, limit_usd: float, prices: Mapping[str, Price], default_model: str) -> None:
        self.limit_usd = limit_usd
        self.prices = prices
        self.default_model = default_model
        self.spent_usd = 0.0
        self.reserved_usd = 0.0
        self.refused = 0

    def worst_case(self, query: Query) -> float:
        """The most one attempt of ``query`` can cost: its whole prompt plus ``max_tokens``."""
        price = self.prices[query.model or self.default_model]
        usage = Usage(prompt_tokens=count_message_tokens(query.messages()), completion_tokens=query.max_tokens or 0)
        return price.cost(usage)

    def reserve(self, query: Query, *, discount: float = 1.0) -> float:
        """Reserve the worst case of one attempt of ``query`` (times ``discount``, for a batch
        price) and return it; :class:`BudgetExceeded` when it does not fit."""
        worst = self.worst_case(query) * discount
        if self.spent_usd + self.reserved_usd + worst > self.limit_usd + 1e-12:
            self.refused += 1
            raise BudgetExceeded(
                f"Not sent: this attempt could cost up to ${worst:.6f}, and ${self.spent_usd:.6f} of the "
                f"${self.limit_usd:.6f} budget is spent (${self.reserved_usd:.6f} reserved by attempts in flight)."
            )
        self.reserved_usd += worst
        return worst

    def settle(self, reserved: float, spent: float) -> None:
        """Replace a reservation by what the attempt really cost (0 when it got no answer)."""
        self.reserved_usd -= reserved
        self.spent_usd += spent

    async def __call__(self, query: Query, attempt: Attempt, call_next: Next) -> Completion:
        discount = self.prices[query.model or self.default_model].batch_discount if attempt.batch else 1.0
        worst = self.reserve(query, discount=discount)
        try:
            completion = await call_next(query, attempt)
        except BaseException:
            self.settle(worst, 0.0)
            raise
        price = self.prices.get(completion.model) or self.prices[query.model or self.default_model]
        self.settle(worst, price.cost(completion.usage) * (price.batch_discount if attempt.batch else 1.0))
        return completion
