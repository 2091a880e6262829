"""Imports with the cyclic garbage collector paused (``llmqueue.ops.collector``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from llmqueue.ops.collector import collector_paused


@pytest.fixture
def collector_state() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if enabled:
        gc.enable()
    else:
        gc.disable()


@pytest.mark.usefixtures("collector_state")
def test_the_collector_is_off_inside_and_on_again_after_with_what_was_made_frozen() -> None:
    gc.enable()
    frozen_before = gc.get_freeze_count()
    with collector_paused():
        assert not gc.isenabled()
        made = [[n] for n in range(1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= frozen_before + len(made)


@pytest.mark.usefixtures("collector_state")
def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()


@pytest.mark.usefixtures("collector_state")
def test_the_collector_is_on_again_when_the_import_fails() -> None:
    gc.enable()
    with pytest.raises(ModuleNotFoundError), collector_paused():
        import llmqueue_no_such_module  # type: ignore[import-not-found]  # noqa: F401
    assert gc.isenabled()
