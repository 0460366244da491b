"""The retry schedule: how long a failed job waits before its next attempt.

Pure arithmetic, no I/O and no clock: the engine asks :meth:`Backoff.delay` for a number of
seconds and adds it to the database's ``now()`` itself, so this module can be tested exhaustively
without a database or a fake clock.

The rule (Graphile Worker's, made configurable)::

    delay(attempts) = factor * base ** min(max(attempts, 0), max_exponent)      seconds
    delay           = min(delay, max_delay)                                    when max_delay is set
    delay           = min(delay * uniform(1 - jitter, 1 + jitter), max_delay)  when jitter > 0

With the defaults (``base=e``, ``max_exponent=10``, ``factor=1``) this is Graphile Worker's
``exp(least(attempts, 10))`` seconds: 2.7 s after the first failure, 7.4 s after the second, and
about 6 h 7 min (22026 s) from the tenth failure on.

Why each rule:

- **The exponent is clamped at both ends.** ``attempts <= 0`` is treated as 0 (a delay of
  ``factor`` seconds) rather than raising, because the value comes from a database row and a retry
  path must never crash. ``max_exponent`` bounds the growth, so ``attempts=10**9`` costs one small
  ``pow`` and cannot overflow.
- **Overflow is refused when the schedule is built, not when a job fails.** A configuration whose
  largest delay is not a finite float (``base=10, max_exponent=400`` without ``max_delay``) is
  rejected by ``__post_init__``; with ``max_delay`` set the cap makes any exponent safe.
- **``max_delay`` is a hard ceiling, even with jitter.** Jitter is applied after the cap and the
  result is capped again, so operators can rely on "never later than ``max_delay``".
- **Jitter is multiplicative** (a fraction of the delay), so it spreads retries of jobs that failed
  together (a downstream outage) without changing the schedule's shape. The random source can be
  injected (``delay(n, rng=random.Random(seed))``) to make tests deterministic.
- **Validation raises ``ValueError`` naming every offending field**, collected into one message,
  the way :meth:`skivi.config.Config.validate` reports configuration problems.
"""

from __future__ import annotations

import dataclasses
import math
import random

__all__ = ["DEFAULT_BACKOFF", "Backoff"]


@dataclasses.dataclass(frozen=True, slots=True)
class Backoff:
    """An exponential retry schedule with an optional cap and jitter (see the module docstring)."""

    base: float = math.e
    """Growth per failed attempt; at least 1. Default: e (Graphile Worker's ``exp()``)."""
    max_exponent: int = 10
    """The exponent stops growing here; at least 0. Default: 10 (about 22026 s with base e)."""
    factor: float = 1.0
    """Seconds multiplied into every delay; at least 0 (0 retries at once). Default: 1.0."""
    max_delay: float | None = None
    """Ceiling in seconds for any delay, jitter included; > 0 when set. Default: None (no cap)."""
    jitter: float = 0.0
    """Fraction of the delay drawn at random either way, between 0 and 1. Default: 0.0."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        # ``not (x >= 1)`` rather than ``x < 1`` so NaN is refused too.
        if not _is_number(self.base) or not self.base >= 1:
            problems.append(f"base must be a number >= 1, got {self.base!r}")
        if (
            not isinstance(self.max_exponent, int)
            or isinstance(self.max_exponent, bool)
            or self.max_exponent < 0
        ):
            problems.append(f"max_exponent must be an int >= 0, got {self.max_exponent!r}")
        if not _is_number(self.factor) or not self.factor >= 0:
            problems.append(f"factor must be a number >= 0, got {self.factor!r}")
        if self.max_delay is not None and (
            not _is_number(self.max_delay) or not self.max_delay > 0
        ):
            problems.append(f"max_delay must be a number > 0 or None, got {self.max_delay!r}")
        if not _is_number(self.jitter) or not 0 <= self.jitter <= 1:
            problems.append(f"jitter must be a number between 0 and 1, got {self.jitter!r}")
        if not problems and self.max_delay is None:
            largest = self._uncapped(self.max_exponent) * (1 + self.jitter)
            if not math.isfinite(largest):
                problems.append(
                    f"max_exponent={self.max_exponent} with base={self.base!r} and "
                    f"factor={self.factor!r} overflows a float; lower it or set max_delay"
                )
        if problems:
            raise ValueError("invalid Backoff: " + "; ".join(problems))

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the next attempt of a job that has failed ``attempts`` times.

        Never raises and never overflows: ``attempts`` is clamped to ``[0, max_exponent]``.
        ``rng`` is used only when ``jitter > 0``; without it the ``random`` module's shared
        generator is used.
        """
        seconds = self._uncapped(min(max(attempts, 0), self.max_exponent))
        if self.max_delay is not None:
            seconds = min(seconds, self.max_delay)
        if self.jitter:
            spread = (rng.uniform if rng is not None else random.uniform)(
                1 - self.jitter, 1 + self.jitter
            )
            seconds *= spread
            if self.max_delay is not None:
                seconds = min(seconds, self.max_delay)
        return seconds

    def _uncapped(self, exponent: int) -> float:
        if self.factor == 0:
            return 0.0  # 0 * inf would be NaN
        try:
            return float(self.factor * self.base**exponent)
        except OverflowError:
            return math.inf


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


DEFAULT_BACKOFF = Backoff()
"""Graphile Worker's schedule: ``exp(min(attempts, 10))`` seconds, no cap, no jitter."""
