"""Budget holds: concurrent requests cannot together spend past a key's budget."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.budgets import Budgets, estimate_usd, usd
from gateway.errors import BudgetExceeded, PermissionDenied
from gateway.keys import VirtualKey
from gateway.types import ModelPrices

PRICES = ModelPrices(input=2.0, output=10.0)  # USD per million tokens


def key(budget: float | None, spend: float = 0.0) -> VirtualKey:
    return VirtualKey(
        id="key_1",
        name="k",
        key_prefix="tg-abcd",
        budget_usd=budget,
        spend_usd=spend,
        rpm=None,
        tpm=None,
        models=None,
        created_at=datetime.now(UTC),
        revoked=False,
    )


def test_money_is_printed_so_small_budgets_are_not_zero() -> None:
    assert usd(0.001) == "$0.001"
    assert usd(0.000125) == "$0.000125"
    assert usd(12.5) == "$12.50"
    assert usd(0) == "$0.00"
    assert usd(3e-7) == "$3.00e-07"


def test_the_estimate_prices_input_and_output() -> None:
    assert estimate_usd(PRICES, 1000, 100) == pytest.approx(0.002 + 0.001)


def test_holds_add_up_across_requests_in_flight_and_are_released() -> None:
    budgets = Budgets()
    k = key(budget=0.01)
    # each request may cost 1,000 in + 500 out = $0.002 + $0.005 = $0.007
    first = budgets.admit(k, "m", PRICES, 1000, 500)
    assert first is not None and budgets.held(k.id) == pytest.approx(0.007)
    with pytest.raises(BudgetExceeded) as info:
        budgets.admit(k, "m", PRICES, 1000, 500)
    assert "$0.007" in info.value.message and info.value.headers["x-should-retry"] == "false"
    first.settle()
    first.settle()  # idempotent
    assert budgets.held(k.id) == 0
    assert budgets.admit(k, "m", PRICES, 1000, 500) is not None


def test_the_default_output_is_held_when_the_request_sets_no_cap() -> None:
    budgets = Budgets(default_output_tokens=1000)
    hold = budgets.admit(key(budget=1.0), "m", PRICES, 0, None)
    assert hold is not None and hold.amount == pytest.approx(0.01)


def test_a_spent_budget_refuses_even_a_free_estimate() -> None:
    with pytest.raises(BudgetExceeded):
        Budgets().admit(key(budget=0.001, spend=0.001), "m", PRICES, 0, 0)


def test_keys_without_a_budget_hold_nothing() -> None:
    budgets = Budgets()
    assert budgets.admit(key(budget=None), "m", None, 10**9, 10**9) is None
    assert budgets.held("key_1") == 0


def test_unpriced_models_are_refused_to_keys_with_a_budget_unless_allowed() -> None:
    with pytest.raises(PermissionDenied) as info:
        Budgets().admit(key(budget=5.0), "mystery", None, 10, 10)
    assert info.value.code == "unpriced_model" and info.value.param == "model"
    with pytest.raises(PermissionDenied):
        Budgets().admit(key(budget=5.0), "half", ModelPrices(input=1.0, output=None), 10, 10)
    assert Budgets(allow_unpriced=True).admit(key(budget=5.0), "mystery", None, 10, 10) is None
