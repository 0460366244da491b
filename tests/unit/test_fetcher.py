"""The fetcher's prefetch arithmetic, without a database: its rate of work and depth."""

from __future__ import annotations

import pytest

from skivi.engine import fetcher as fetcher_module
from skivi.engine.fetcher import Fetcher


def make_fetcher() -> Fetcher:
    return Fetcher(None, None, None,  # type: ignore[arg-type]  # no claim is sent here
                   engine_id=lambda: 1, batch_size=4000, poll_interval=1.0,
                   capacity=lambda: 16, in_flight=lambda: 0, paused=lambda: False,
                   on_claimed=lambda n: None, flushes=lambda: 0,
                   tasks=None, forbidden_flags=None, queues=None)


def run_clock(monkeypatch: pytest.MonkeyPatch, f: Fetcher, done_at: object,
              until: float, step: float = 0.005) -> list[tuple[float, float]]:
    """Step a fake clock from 0 to ``until``; at each step the engine has done
    ``done_at(t)`` jobs and measures its rate, as room() does before each claim."""
    now = [0.0]
    monkeypatch.setattr(fetcher_module.time, "monotonic", lambda: now[0])
    f._rate_at = 0.0
    f._rate_samples.clear()
    f._rate_samples.append((0.0, 0))
    seen = []
    while now[0] < until:
        now[0] = round(now[0] + step, 9)
        f.claimed = done_at(now[0])  # type: ignore[operator]
        f._measure_rate()
        seen.append((now[0], f.rate))
    return seen


def test_rate_follows_an_engine_whose_child_reports_its_jobs_in_bursts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 3,000 jobs/s, reported 300 at a time every 100 ms: the rate over one 20 ms window
    # would read 15,000/s at each burst, and the prefetch would follow it to 3,000 jobs.
    f = make_fetcher()
    seen = run_clock(monkeypatch, f, lambda t: 300 * int(t / 0.1), until=2.0)
    late = [rate for t, rate in seen if t >= 0.5]
    assert 2000 <= min(late) and max(late) <= 4500, (min(late), max(late))
    assert f.depth() <= round(4500 * fetcher_module.PREFETCH_HORIZON)


def test_rate_rises_within_a_few_windows_from_a_standing_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 80,000 jobs/s from the first moment: the prefetch reaches the batch size at once.
    f = make_fetcher()
    seen = run_clock(monkeypatch, f, lambda t: int(80_000 * t), until=0.1)
    assert next(rate for t, rate in seen if t >= 0.06) >= 70_000
    assert f.depth() == 4000
