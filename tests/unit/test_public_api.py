"""The public names of ``skivi`` (its ``__all__``) exist and are the objects the engine uses."""

from __future__ import annotations

import pytest

import skivi
import skivi.engine.child
import skivi.errors
import skivi.registry
import skivi.retry


def resize(ctx: skivi.JobContext) -> None:
    """A handler annotated with the public context type (what the README shows)."""


@skivi.task(backoff=skivi.Backoff(factor=0.1), timeout=5)
def thumbnail(ctx: skivi.JobContext) -> None:
    """A handler given options with the decorator form."""


@pytest.mark.parametrize("name", skivi.__all__)
def test_every_public_name_is_there_when_skivi_is_imported(name: str) -> None:
    assert getattr(skivi, name) is not None


def test_public_names_are_the_objects_the_engine_uses_when_reexported() -> None:
    # The handler's ctx is built by the child as skivi.engine.child.JobContext; annotations
    # and isinstance checks with skivi.JobContext must mean that very class.
    assert skivi.JobContext is skivi.engine.child.JobContext
    assert skivi.task is skivi.registry.task
    assert skivi.Backoff is skivi.retry.Backoff
    # What start(migrate=False) raises on a schema that is not migrated: catchable by name.
    assert skivi.SchemaNotMigrated is skivi.errors.SchemaNotMigrated
    assert issubclass(skivi.SchemaNotMigrated, skivi.SkiviError)


def test_task_options_reach_the_registry_when_given_through_the_public_names() -> None:
    backoff = skivi.Backoff(factor=0.5, max_delay=600)
    system = skivi.create_system({}, {"resize": skivi.task(resize, timeout=30, backoff=backoff),
                                      "thumbnail": thumbnail, "plain": resize})
    registry = system.registry()
    resize_task, thumbnail_task, plain = (registry.get(n) for n in ("resize", "thumbnail",
                                                                     "plain"))
    assert resize_task is not None and thumbnail_task is not None and plain is not None
    assert (resize_task.timeout, resize_task.backoff) == (30.0, backoff)
    assert (thumbnail_task.timeout, thumbnail_task.backoff) == (5.0, skivi.Backoff(factor=0.1))
    assert (plain.timeout, plain.backoff) == (None, skivi.retry.DEFAULT_BACKOFF)
    assert thumbnail(None) is None  # the decorated function can still be called directly


def test_task_refuses_a_bad_option_when_it_is_written() -> None:
    with pytest.raises(ValueError, match="timeout"):
        skivi.task(resize, timeout=0)
