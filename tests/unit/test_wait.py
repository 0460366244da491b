"""``tests.support.wait.wait_for``: returns the first truthy value, fails naming what it awaited."""

from __future__ import annotations

import itertools

import pytest

from tests.support.wait import wait_for


def test_wait_for_returns_the_first_truthy_value() -> None:
    counter = itertools.count()
    assert wait_for(lambda: next(counter) >= 3 and "done", timeout=5) == "done"


def test_wait_for_names_what_it_awaited_on_timeout() -> None:
    with pytest.raises(AssertionError, match=r"waiting for the sky to fall \(last value: 0\)"):
        wait_for(lambda: 0, timeout=0.05, what="the sky to fall")
