"""Unit tests for skivi.retry: the backoff schedule is pure arithmetic, so every rule is pinned."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from skivi.retry import DEFAULT_BACKOFF, Backoff


def test_backoff_is_frozen_when_built() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_BACKOFF.base = 2.0  # type: ignore[misc]


def test_backoff_names_every_field_when_several_invalid() -> None:
    with pytest.raises(ValueError) as info:
        Backoff(base=0.0, factor=-1.0, jitter=2.0)
    message = str(info.value)
    assert "base" in message
    assert "factor" in message
    assert "jitter" in message


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"base": 0.5}, "base"),
        ({"base": math.nan}, "base"),
        ({"factor": -1.0}, "factor"),
        ({"factor": math.nan}, "factor"),
        ({"jitter": -0.1}, "jitter"),
        ({"jitter": 1.5}, "jitter"),
        ({"max_delay": 0.0}, "max_delay"),
        ({"max_delay": -3.0}, "max_delay"),
        ({"max_delay": math.nan}, "max_delay"),
        ({"max_exponent": -1}, "max_exponent"),
        ({"max_exponent": 2.5}, "max_exponent"),
        ({"base": 10.0, "max_exponent": 400}, "max_exponent"),
        ({"factor": math.inf}, "max_exponent"),
    ],
)
def test_backoff_raises_value_error_naming_field_when_invalid(
    kwargs: dict[str, float], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_default_backoff_is_graphile_schedule_when_unconfigured() -> None:
    assert DEFAULT_BACKOFF == Backoff()
    assert DEFAULT_BACKOFF.base == math.e
    assert DEFAULT_BACKOFF.max_exponent == 10
    assert DEFAULT_BACKOFF.factor == 1.0
    assert DEFAULT_BACKOFF.max_delay is None
    assert DEFAULT_BACKOFF.jitter == 0.0


def test_delay_caps_at_max_delay_when_set() -> None:
    backoff = Backoff(max_delay=60.0)
    assert backoff.delay(1) == pytest.approx(math.e)
    assert backoff.delay(4) == pytest.approx(math.exp(4))  # 54.6 s: under the cap
    assert backoff.delay(5) == 60.0  # 148.4 s: capped
    assert backoff.delay(10**9) == 60.0


def test_delay_does_not_overflow_when_max_delay_caps_a_huge_exponent() -> None:
    backoff = Backoff(base=10.0, max_exponent=10_000, max_delay=3600.0)
    assert backoff.delay(10**9) == 3600.0
    assert backoff.delay(2) == 100.0


def test_delay_is_constant_when_base_is_one() -> None:
    backoff = Backoff(base=1.0, factor=5.0)
    assert {backoff.delay(n) for n in (0, 1, 7, 10**9)} == {5.0}


def test_delay_is_exact_when_base_and_factor_are_binary() -> None:
    backoff = Backoff(base=2.0, max_exponent=5, factor=0.5)
    assert [backoff.delay(n) for n in (-1, 0, 1, 2, 5, 6, 10**9)] == [
        0.5, 0.5, 1.0, 2.0, 16.0, 16.0, 16.0,
    ]


def test_delay_is_reproducible_when_rng_is_seeded() -> None:
    backoff = Backoff(jitter=0.5)
    first = [backoff.delay(n, rng=random.Random(7)) for n in range(5)]
    second = [backoff.delay(n, rng=random.Random(7)) for n in range(5)]
    assert first == second


def test_delay_is_zero_when_factor_is_zero() -> None:
    backoff = Backoff(base=10.0, max_exponent=1_000_000, factor=0.0)
    assert backoff.delay(10**9) == 0.0


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [
        (-5, 1.0),
        (0, 1.0),
        (1, 2.718281828459045),
        (2, 7.38905609893065),
        (10, 22026.465794806718),
        (11, 22026.465794806718),
        (10**9, 22026.465794806718),
    ],
)
def test_delay_matches_exp_of_clamped_attempts_when_default(attempts: int, expected: float) -> None:
    assert DEFAULT_BACKOFF.delay(attempts) == pytest.approx(expected, rel=1e-12)
    assert DEFAULT_BACKOFF.delay(attempts) == pytest.approx(
        math.exp(min(max(attempts, 0), 10)), rel=1e-12
    )


def test_delay_never_exceeds_max_delay_when_jittered() -> None:
    backoff = Backoff(max_delay=100.0, jitter=1.0)
    rng = random.Random(99)
    samples = [backoff.delay(10**9, rng=rng) for _ in range(500)]
    assert all(0.0 <= s <= 100.0 for s in samples)
    assert min(samples) < 50.0  # jitter still applies below the ceiling


def test_delay_stays_within_jitter_bounds_when_jitter_set() -> None:
    backoff = Backoff(base=2.0, jitter=0.25)
    rng = random.Random(1234)
    for attempts in range(12):
        nominal = 2.0 ** min(attempts, 10)
        samples = [backoff.delay(attempts, rng=rng) for _ in range(200)]
        assert all(nominal * 0.75 <= s <= nominal * 1.25 for s in samples)
        assert min(samples) < nominal < max(samples)  # it really spreads both ways


def test_delay_uses_module_random_when_no_rng_given() -> None:
    backoff = Backoff(base=2.0, jitter=0.1)
    random.seed(5)
    first = backoff.delay(3)
    random.seed(5)
    assert backoff.delay(3) == first
    assert 7.2 <= first <= 8.8
