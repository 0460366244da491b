"""The child pool's lanes (skivi.engine.children), no processes needed."""

from __future__ import annotations

import asyncio

from skivi import create_system
from skivi.engine.children import ChildPool
from skivi.engine.observer import EngineObserver
from skivi.events import Emitter


def lane(**worker: int) -> int:
    system = create_system({"database": {"connection_string": "postgresql://x@127.0.0.1:1/x"},
                            "worker": {"processes": 1, **worker}},
                           tasks={"sync": lambda ctx: None})
    pool = ChildPool(system.instance, system.instance.registry(), EngineObserver(Emitter()),
                     on_crash=lambda: None, cut_short=asyncio.Event())
    return pool.sync_depth


def test_the_sync_lane_is_as_deep_as_the_prefetch_and_never_shallower_than_concurrency(
) -> None:
    assert lane() == 64
    assert lane(sync_prefetch=1, concurrency=1) == 1
    assert lane(sync_prefetch=1, concurrency=16) == 16
    assert lane(sync_prefetch=8, concurrency=1, sync_threads=4) == 8
