"""relay.opening: the budgets of connections still opening, in all and per address."""

from __future__ import annotations

from relay.opening import OpeningBudget


def budget(total: int, per_address: int, refusals: list[int]) -> OpeningBudget:
    return OpeningBudget(
        total=total,
        per_address=per_address,
        exempt=lambda address: address == "10.0.0.1",
        on_refused=lambda: refusals.append(1),
    )


def test_per_address_budget_and_release() -> None:
    refusals: list[int] = []
    b = budget(10, 2, refusals)
    assert b.admit("a") and b.admit("a")
    assert not b.admit("a")
    assert b.admit("b")
    assert b.opening == 3 and len(refusals) == 1
    b.release("a")
    assert b.admit("a")
    assert b.opening == 3


def test_total_budget_counts_every_address() -> None:
    refusals: list[int] = []
    b = budget(3, 2, refusals)
    assert b.admit("a") and b.admit("b") and b.admit("c")
    assert not b.admit("d")
    b.release("b")
    assert b.admit("d")
    assert len(refusals) == 1


def test_trusted_proxy_is_exempt_from_the_per_address_budget_only() -> None:
    refusals: list[int] = []
    b = budget(4, 1, refusals)
    assert all(b.admit("10.0.0.1") for _ in range(4))
    assert not b.admit("10.0.0.1")  # the total still applies
    for _ in range(4):
        b.release("10.0.0.1")
    assert b.opening == 0
    assert b.admit("a") and not b.admit("a")
