"""The reconnect policy: a pure iterator of delays."""

from __future__ import annotations

import itertools
import random

import pytest

from kioskd.core.backoff import delays


def take(n: int, **kwargs: object) -> list[float]:
    return list(itertools.islice(delays(**kwargs), n))  # type: ignore[arg-type]


def test_first_delay_is_random_under_first_max() -> None:
    """The first delay is first_max × rand(): under first_max, so a fleet does not reconnect in lock-step."""
    assert take(1, first_max_s=1.0, rand=lambda: 0.5) == [0.5]
    assert take(1, first_max_s=1.0, rand=lambda: 0.0) == [0.0]
    assert take(1, first_max_s=2.0, rand=lambda: 0.999)[0] < 2.0


def test_delays_double_then_cap() -> None:
    """With rand 0.5 the delays double (×0.875 jitter) up to the cap and stay there."""
    got = take(9, first_max_s=1.0, factor=2.0, cap_s=30.0, rand=lambda: 0.5)
    assert got == pytest.approx([0.5, 1.75, 3.5, 7.0, 14.0, 26.25, 26.25, 26.25, 26.25])


@pytest.mark.parametrize("seed", range(5))
def test_jitter_stays_within_bounds(seed: int) -> None:
    """Every later delay lies in [0.75, 1.0] × min(first_max × factor^n, cap) and never exceeds the cap."""
    rng = random.Random(seed)
    got = take(40, first_max_s=1.0, factor=2.0, cap_s=30.0, rand=rng.random)
    assert 0.0 <= got[0] < 1.0
    for n, delay_s in enumerate(got[1:], start=1):
        base_s = min(2.0**n, 30.0)
        assert 0.75 * base_s <= delay_s <= base_s
        assert delay_s <= 30.0


def test_extreme_rand_values_stay_in_bounds() -> None:
    """rand() at 0 and just under 1 keeps every delay within [0.75 × base, base]."""
    low = take(8, first_max_s=1.0, cap_s=8.0, rand=lambda: 0.0)
    high = take(8, first_max_s=1.0, cap_s=8.0, rand=lambda: 0.9999999)
    assert low == pytest.approx([0.0, 1.5, 3.0, 6.0, 6.0, 6.0, 6.0, 6.0])
    assert all(h <= c for h, c in zip(high, [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0], strict=True))


def test_iterator_is_endless_and_independent() -> None:
    """delays() never runs out, and two iterators do not share state (a reset is a fresh iterator)."""
    a = delays(first_max_s=1.0, cap_s=4.0, rand=lambda: 0.5)
    b = delays(first_max_s=1.0, cap_s=4.0, rand=lambda: 0.5)
    assert len(list(itertools.islice(a, 1000))) == 1000
    assert next(b) == 0.5
