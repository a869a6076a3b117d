"""A hard budget, a link of the call chain: no attempt is sent that could take the run past ``budget_usd``.

Before each attempt the link reserves the attempt's worst case, its prompt (the kit's token rule)
plus ``max_tokens`` at the model's price.  If what was spent plus what is reserved plus this
attempt would pass the budget, the attempt waits for attempts in flight to settle (their unspent
reservations come back); it is refused, its row getting a :class:`~hybrid.errors.BudgetExceeded`
error (kind ``budget``), only when it could not fit even if every reservation came back.  Because
the reservation is taken before sending, concurrency cannot overshoot: at any moment, spent plus
reserved stays within the budget.

After the attempt the reservation is replaced by what the provider may bill: the real cost from
the usage the server reported (cached prompt tokens at their own price), or, for an attempt that
may have been billed without a usage report (an answer cut off or unreadable, an attempt
cancelled or timed out after its request left), the whole reservation; an attempt that got no
answer at all (refused with a status, no connection) costs nothing.  So what the budget counts is
never less than the provider's bill.  An attempt sent through a Batch API (``Attempt.batch``) is
reserved and paid at the batch price, and never waits: a batch's reservations only come back
when the batch does, after every line has been filed.

A cache hit never reaches this link (the cache comes first in the chain), so it costs nothing.
The orchestrator checks before anything is sent that every query has ``max_tokens`` and a price,
since without them the worst case is unbounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from hybrid.chain import Attempt, Next
from hybrid.errors import BudgetExceeded, InvalidResponse
from hybrid.metrics import BudgetState
from hybrid.query import Completion, Price, Query, Usage
from hybrid.tokens import count_message_tokens

#: Float noise in sums of reservations: below this, money is none.
_ROUNDING = 1e-12


class Budget:
    """The budget link (see the module docstring); ``spent_usd`` is what the attempts so far cost."""

    def __init__(self, limit_usd: float, prices: Mapping[str, Price], default_model: str) -> None:
        self.limit_usd = limit_usd
        self.prices = prices
        self.default_model = default_model
        self.spent_usd = 0.0
        self.reserved_usd = 0.0
        #: Reserved, then given back unspent (the worst case was not reached, or nothing was billed).
        self.released_usd = 0.0
        self.refused = 0
        self._settled = asyncio.Event()

    def state(self) -> BudgetState:
        """The budget as it stands (for the run's metrics)."""
        return BudgetState(self.limit_usd, self.spent_usd, max(self.reserved_usd, 0.0), self.released_usd)

    def worst_case(self, query: Query) -> float:
        """The most one attempt of ``query`` can cost: its whole prompt plus ``max_tokens``."""
        price = self.prices[query.model or self.default_model]
        usage = Usage(prompt_tokens=count_message_tokens(query.messages()), completion_tokens=query.max_tokens or 0)
        return price.cost(usage)

    def _fits(self, worst: float, *, held: float) -> bool:
        """Whether an attempt costing up to ``worst`` fits beside what is spent and ``held`` in reservations."""
        return self.spent_usd + held + worst <= self.limit_usd + _ROUNDING

    def reserve(self, worst: float, price: Price) -> None:
        """Reserve ``worst`` (an attempt's worst case at ``price``); :class:`BudgetExceeded`, naming
        where the price came from, when it does not fit now."""
        if not self._fits(worst, held=self.reserved_usd):
            self.refused += 1
            raise BudgetExceeded(
                f"Not sent: this attempt could cost up to ${worst:.6f} (priced from {price.source}), and "
                f"${self.spent_usd:.6f} of the ${self.limit_usd:.6f} budget is spent (${self.reserved_usd:.6f} "
                "reserved by attempts in flight)."
            )
        self.reserved_usd += worst

    def settle(self, reserved: float, spent: float) -> None:
        """Replace a reservation by what the attempt cost (0 when it got no answer); wakes the
        attempts waiting for money to come back."""
        self.reserved_usd -= reserved
        self.spent_usd += spent
        self.released_usd += reserved - spent
        settled, self._settled = self._settled, asyncio.Event()
        settled.set()

    async def _room(self, worst: float) -> None:
        """Wait while ``worst`` does not fit now but would once reservations in flight come back."""
        while (
            not self._fits(worst, held=self.reserved_usd)
            and self._fits(worst, held=0.0)
            and self.reserved_usd > _ROUNDING
        ):
            await self._settled.wait()

    async def __call__(self, query: Query, attempt: Attempt, call_next: Next) -> Completion:
        asked = self.prices[query.model or self.default_model]
        worst = self.worst_case(query) * (asked.batch_discount if attempt.batch else 1.0)  # once per attempt
        if not attempt.batch:
            await self._room(worst)
        self.reserve(worst, asked)
        try:
            completion = await call_next(query, attempt)
        except BaseException as exc:
            self.settle(worst, worst if _may_have_been_billed(exc, attempt) else 0.0)
            raise
        price = self.prices.get(completion.model) or self.prices[query.model or self.default_model]
        self.settle(worst, price.cost(completion.usage) * (price.batch_discount if attempt.batch else 1.0))
        return completion


def _may_have_been_billed(exc: BaseException, attempt: Attempt) -> bool:
    """Whether a failed attempt may be on the provider's bill: an answer arrived but could not be
    read whole (cut off, malformed, too large), or the attempt was stopped after its request left."""
    return isinstance(exc, InvalidResponse) or (isinstance(exc, asyncio.CancelledError) and attempt.sent_at is not None)
