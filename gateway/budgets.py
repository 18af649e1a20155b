"""Budget reservations: a request holds an estimate of its cost from admission to finish, so concurrent
requests cannot together spend past a key's budget.

At admission ``Budgets.admit`` estimates the request's cost (its input from the body size, its output
from the requested cap or a configured default, at the target model's prices) and refuses it when the
key's spend, plus what its requests in flight hold, plus this estimate would pass the budget. At finish
``Reservation.settle`` releases the hold (the actual cost is added to the spend by
``KeyStore.record_usage``). Holds live in this process: with N replicas a key can overspend by at most
the estimates in flight on the other replicas.

A model whose price is unknown cannot be metered: a key with a budget is refused it unless
``budget.allow_unpriced`` says otherwise (then the request is logged with an unknown cost).

Pure bookkeeping over plain data: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import BudgetExceeded, PermissionDenied
from gateway.keys import VirtualKey
from gateway.types import ModelPrices


def usd(amount: float) -> str:
    """Money for messages: cents when a dollar or more, else enough significant digits to tell a
    $0.001 budget from $0 (``$0.001``, ``$0.000125``)."""
    if amount >= 1 or amount == 0:
        return f"${amount:,.2f}"
    return "$" + f"{amount:.6g}" if amount >= 1e-4 else f"${amount:.2e}"


def estimate_usd(prices: ModelPrices, input_tokens: int, output_tokens: int) -> float:
    """An upper-bound guess of a request's cost: every input token at the plain input price."""
    return (input_tokens * (prices.input or 0.0) + output_tokens * (prices.output or 0.0)) / 1e6


@dataclass(slots=True)
class Reservation:
    """One request's hold on its key's budget. ``settle`` releases it; idempotent."""

    budgets: Budgets | None
    key_id: str
    amount: float

    def settle(self) -> None:
        budgets, self.budgets = self.budgets, None
        if budgets is not None:
            budgets.release(self.key_id, self.amount)


class Budgets:
    """The holds of the requests in flight, by key."""

    def __init__(self, *, default_output_tokens: int = 1024, allow_unpriced: bool = False) -> None:
        self.default_output_tokens = default_output_tokens
        self.allow_unpriced = allow_unpriced
        self._held: dict[str, float] = {}

    def held(self, key_id: str) -> float:
        """USD held by the key's requests in flight. Reads only."""
        return self._held.get(key_id, 0.0)

    def admit(
        self,
        key: VirtualKey,
        model: str,
        prices: ModelPrices | None,
        input_tokens: int,
        max_output_tokens: int | None,
    ) -> Reservation | None:
        """Admits one request of ``key`` for ``model`` or raises ``BudgetExceeded`` (429) /
        ``PermissionDenied`` (403: an unpriced model for a key with a budget). Returns the hold to settle
        at finish (None for a key without a budget)."""
        budget = key.budget_usd
        if budget is None:
            return None
        if prices is None or prices.input is None or prices.output is None:
            if self.allow_unpriced:
                return None
            raise PermissionDenied(
                f"The model {model!r} has no known price, so a key with a budget may not use it "
                "(set budget.allow_unpriced, or give the model a price in the config).",
                param="model",
                code="unpriced_model",
            )
        output = max_output_tokens if max_output_tokens is not None else self.default_output_tokens
        estimate = estimate_usd(prices, input_tokens, max(0, output))
        held = self._held.get(key.id, 0.0)
        if key.spend_usd >= budget or key.spend_usd + held + estimate > budget:
            left = max(0.0, budget - key.spend_usd - held)
            raise BudgetExceeded(
                f"This API key's budget of {usd(budget)} cannot cover this request: spent "
                f"{usd(key.spend_usd)}, {usd(held)} held by requests in flight, {usd(left)} left, and this "
                f"request may cost up to {usd(estimate)}."
            )
        self._held[key.id] = held + estimate
        return Reservation(self, key.id, estimate)

    def reserve(self, key: VirtualKey, amount: float, what: str) -> Reservation | None:
        """Holds ``amount`` USD for ``key`` (a batch job's estimate, released item by item) or raises
        ``BudgetExceeded``. None for a key without a budget."""
        budget = key.budget_usd
        if budget is None:
            return None
        held = self._held.get(key.id, 0.0)
        if key.spend_usd >= budget or key.spend_usd + held + amount > budget:
            left = max(0.0, budget - key.spend_usd - held)
            raise BudgetExceeded(
                f"This API key's budget of {usd(budget)} cannot cover {what}: spent {usd(key.spend_usd)}, "
                f"{usd(held)} held by requests in flight, {usd(left)} left, and it may cost up to "
                f"{usd(amount)}."
            )
        self._held[key.id] = held + amount
        return Reservation(self, key.id, amount)

    def hold(self, key_id: str, amount: float) -> None:
        """Adds ``amount`` to the key's holds without a check (work accepted earlier, held again after a
        restart). Mutates the holds only."""
        if amount > 0:
            self._held[key_id] = self._held.get(key_id, 0.0) + amount

    def release(self, key_id: str, amount: float) -> None:
        """Drops ``amount`` from the key's holds. Mutates the holds only."""
        left = self._held.get(key_id, 0.0) - amount
        if left > 1e-12:
            self._held[key_id] = left
        else:
            self._held.pop(key_id, None)
