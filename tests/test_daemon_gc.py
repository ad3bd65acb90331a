"""The daemon tunes the garbage collector before serving: start-up objects frozen out of every
collection, young collections less often (see resolver.daemon_main)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from resolver import daemon_main


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_start_up_objects_are_frozen_and_young_collections_are_rarer() -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    daemon_main._tune_gc()
    assert gc.get_freeze_count() > 1000
    assert gc.get_threshold() == daemon_main.GC_THRESHOLDS
    assert daemon_main.GC_THRESHOLDS[0] > 700
