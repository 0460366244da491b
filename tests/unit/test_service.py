"""Every long-running part of the engine's parent keeps one lifecycle contract
(skivi.engine.service.Service): async start() and async stop()."""

from __future__ import annotations

import inspect

import pytest

from skivi.engine.children import ChildPool
from skivi.engine.completer import Completer
from skivi.engine.cron_process import CronProcess
from skivi.engine.fetcher import Fetcher
from skivi.engine.maintenance import HistoryPruner, Liveness
from skivi.engine.observer import QueueStatsPoller
from skivi.engine.service import Service

PARTS = [ChildPool, CronProcess, Fetcher, Completer, Liveness, HistoryPruner, QueueStatsPoller]


@pytest.mark.parametrize("part", PARTS, ids=lambda p: p.__name__)
def test_each_part_starts_and_stops_the_same_way(part: type) -> None:
    for name in ("start", "stop"):
        method = getattr(part, name)
        assert inspect.iscoroutinefunction(method), f"{part.__name__}.{name} is not async"
        params = [p for p in inspect.signature(method).parameters.values()
                  if p.name != "self" and p.default is inspect.Parameter.empty]
        assert not params, f"{part.__name__}.{name} takes {params}: set them at construction"
    assert set(Service.__dict__) >= {"start", "stop"}

