"""Unit tests for skivi.db.retry: the waits between tries of a database operation, which
errors are worth another try, and ``retrying``. (A job's retry schedule is skivi.retry, in
test_retry.py.) The errors are psycopg's own classes, built as psycopg builds them: no
database, no mocks."""

from __future__ import annotations

import asyncio
import random

import psycopg
import pytest

from skivi.db.retry import (
    FOR_GOOD_SQLSTATES,
    JITTER_AROUND,
    JITTER_BELOW,
    RETRYABLE_SQLSTATES,
    RetryBackoff,
    for_good,
    is_retryable,
    refused_for_good,
    retrying,
    unusable_url,
)

REFUSED_LOGIN = psycopg.OperationalError(
    'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  '
    'password authentication failed for user "skivi"')
SERVER_AWAY = psycopg.OperationalError(
    'connection failed: connection to server at "127.0.0.1", port 5432 failed: Connection '
    "refused\n\tIs the server running on that host and accepting TCP/IP connections?")
STARTING_UP = psycopg.OperationalError(
    'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  the '
    "database system is starting up")


def error(sqlstate: str) -> psycopg.Error:
    """The exception psycopg raises for a statement failing with ``sqlstate``."""
    return psycopg.errors.lookup(sqlstate)(f"failed with {sqlstate}")


def test_backoff_caps_at_max_delay_when_doubling() -> None:
    backoff = RetryBackoff(0.05, 2.0)
    waits = [backoff.next() for _ in range(9)]
    assert waits == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0])
    assert backoff.failures == 9


def test_backoff_counts_from_first_delay_when_reset() -> None:
    backoff = RetryBackoff(0.1, 10.0)
    for _ in range(5):
        backoff.next()
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.delay == 0.1
    assert backoff.next() == 0.1


def test_backoff_grows_by_factor_when_given() -> None:
    backoff = RetryBackoff(1.0, 100.0, factor=3.0)
    assert [backoff.next() for _ in range(5)] == [1.0, 3.0, 9.0, 27.0, 81.0]


def test_backoff_is_constant_when_factor_is_one() -> None:
    backoff = RetryBackoff(0.5, 0.5, factor=1.0)
    assert [backoff.next() for _ in range(3)] == [0.5, 0.5, 0.5]


def test_backoff_is_reproducible_when_rng_is_seeded() -> None:
    def waits() -> list[float]:
        backoff = RetryBackoff(0.1, 5.0, jitter=JITTER_AROUND, rng=random.Random(7))
        return [backoff.next() for _ in range(8)]

    assert waits() == waits()


def test_backoff_jitter_spreads_around_the_delay_when_jitter_around() -> None:
    backoff = RetryBackoff(0.05, 2.0, jitter=JITTER_AROUND, rng=random.Random(1))
    for _ in range(200):
        delay = backoff.delay
        wait = backoff.next()
        assert 0.5 * delay <= wait <= 1.5 * delay
    assert backoff.delay == 2.0  # the schedule under the jitter is unchanged


def test_backoff_jitter_stays_under_the_cap_when_jitter_below() -> None:
    backoff = RetryBackoff(0.1, 10.0, jitter=JITTER_BELOW, rng=random.Random(2))
    waits = [backoff.next() for _ in range(200)]
    assert max(waits) <= 10.0
    assert min(waits) >= 0.05


def test_backoff_names_every_field_when_several_invalid() -> None:
    with pytest.raises(ValueError) as info:
        RetryBackoff(0.0, -1.0, factor=0.5, jitter=(1.5, 0.5))
    message = str(info.value)
    for field in ("first_delay", "max_delay", "factor", "jitter"):
        assert field in message


@pytest.mark.parametrize(("args", "kwargs", "field"), [
    ((-1.0, 1.0), {}, "first_delay"),
    ((float("nan"), 1.0), {}, "first_delay"),
    ((2.0, 1.0), {}, "max_delay"),
    ((0.1, 1.0), {"factor": 0.9}, "factor"),
    ((0.1, 1.0), {"jitter": (-0.1, 1.0)}, "jitter"),
])
def test_backoff_raises_value_error_naming_field_when_invalid(
        args: tuple[float, float], kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RetryBackoff(*args, **kwargs)  # type: ignore[arg-type]


def test_backoff_sleep_waits_next_when_awaited() -> None:
    backoff = RetryBackoff(0.001, 0.002)
    assert asyncio.run(backoff.sleep()) == 0.001
    assert backoff.delay == 0.002


def test_tables_do_not_overlap_when_classifying() -> None:
    assert not RETRYABLE_SQLSTATES & FOR_GOOD_SQLSTATES


@pytest.mark.parametrize("sqlstate", sorted(RETRYABLE_SQLSTATES))
def test_is_retryable_when_sqlstate_is_transient(sqlstate: str) -> None:
    assert is_retryable(error(sqlstate))
    assert not for_good(error(sqlstate))


@pytest.mark.parametrize("sqlstate", sorted(FOR_GOOD_SQLSTATES))
def test_is_for_good_when_sqlstate_is_permanent(sqlstate: str) -> None:
    assert for_good(error(sqlstate))
    assert not is_retryable(error(sqlstate))


@pytest.mark.parametrize("sqlstate", ["22P02", "23505", "42601", "57014"])
def test_is_neither_when_the_statement_itself_failed(sqlstate: str) -> None:
    # A bad value, a unique violation, a syntax error, a statement timeout: the same
    # statement fails again, but nothing says the login or the schema is wrong.
    assert not is_retryable(error(sqlstate))
    assert not for_good(error(sqlstate))


def test_is_retryable_when_the_connection_failed_without_sqlstate() -> None:
    for exc in (SERVER_AWAY, STARTING_UP, psycopg.OperationalError("server closed the "
                "connection unexpectedly"), psycopg.InterfaceError("the connection is lost")):
        assert is_retryable(exc), exc
        assert not for_good(exc), exc


def test_is_for_good_when_the_login_is_refused() -> None:
    assert refused_for_good(REFUSED_LOGIN)
    assert for_good(REFUSED_LOGIN)
    assert not is_retryable(REFUSED_LOGIN)
    unknown_db = psycopg.OperationalError('connection failed: FATAL:  database "nope" does '
                                          "not exist")
    assert for_good(unknown_db)
    assert not is_retryable(unknown_db)


def test_is_for_good_when_the_connection_string_is_unusable() -> None:
    bad_option = psycopg.ProgrammingError('invalid connection option "nope"')
    bad_port = psycopg.OperationalError('connection is bad: invalid integer value "x" for '
                                        'connection option "port"')
    for exc in (bad_option, bad_port):
        assert unusable_url(exc)
        assert for_good(exc)
        assert not is_retryable(exc)


def test_is_neither_when_not_a_database_error() -> None:
    for exc in (ValueError("x"), TimeoutError(), OSError("connection refused")):
        assert not is_retryable(exc)
        assert not for_good(exc)


def test_refused_for_good_is_false_when_server_is_away() -> None:
    assert not refused_for_good(SERVER_AWAY)
    assert not refused_for_good(STARTING_UP)
    assert not refused_for_good(error("28P01"))  # a statement's error, not a login's text


class Flaky:
    """An operation that fails with ``errors`` in turn, then returns ``"done"``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_retrying_returns_when_transient_errors_end() -> None:
    op = Flaky(SERVER_AWAY, error("40001"), error("57P01"))
    seen: list[tuple[BaseException, float]] = []
    backoff = RetryBackoff(0.001, 0.004)
    result = asyncio.run(retrying(op, backoff=backoff,
                                  on_retry=lambda exc, wait: seen.append((exc, wait))))
    assert result == "done"
    assert op.calls == 4
    assert [wait for _, wait in seen] == [0.001, 0.002, 0.004]
    assert isinstance(seen[1][0], psycopg.errors.SerializationFailure)
    assert backoff.failures == 0  # reset by the success


def test_retrying_raises_at_once_when_error_is_for_good() -> None:
    op = Flaky(SERVER_AWAY, REFUSED_LOGIN)
    with pytest.raises(psycopg.OperationalError, match="password authentication"):
        asyncio.run(retrying(op, backoff=RetryBackoff(0.001, 0.001)))
    assert op.calls == 2


def test_retrying_raises_at_once_when_not_a_database_error() -> None:
    op = Flaky(KeyError("bug"))
    with pytest.raises(KeyError):
        asyncio.run(retrying(op, backoff=RetryBackoff(0.001, 0.001)))
    assert op.calls == 1


def test_retrying_retries_what_retry_if_accepts_when_given() -> None:
    op = Flaky(error("42501"), error("23505"))
    result = asyncio.run(retrying(op, backoff=RetryBackoff(0.001, 0.001),
                                  retry_if=lambda exc: isinstance(exc, psycopg.Error)))
    assert result == "done"
    assert op.calls == 3


def test_retrying_gives_up_when_the_next_wait_passes_timeout() -> None:
    op = Flaky(*[SERVER_AWAY] * 100)
    with pytest.raises(psycopg.OperationalError, match="Connection refused"):
        asyncio.run(retrying(op, backoff=RetryBackoff(0.01, 0.04), timeout=0.1))
    # 0.01 + 0.02 + 0.04 = 0.07 s slept; the next 0.04 would end past 0.1 s.
    assert 2 <= op.calls <= 4


def test_retrying_stops_when_cancelled_while_waiting() -> None:
    async def main() -> int:
        op = Flaky(*[SERVER_AWAY] * 100)
        task = asyncio.ensure_future(retrying(op, backoff=RetryBackoff(10.0, 10.0)))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return op.calls

    assert asyncio.run(main()) == 1
