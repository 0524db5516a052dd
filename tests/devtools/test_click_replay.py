"""The benches' scheduled sender keeps its schedule: no garbage collection pauses it mid-run."""

import gc

import pytest

from devtools.click_replay import collector_paused


def test_collector_paused_freezes_what_was_held_and_restores_the_collector():
    held = [object() for _ in range(100)]
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        assert gc.get_freeze_count() >= len(held)  # what the process held is out of every collection
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_collector_paused_restores_the_collector_when_the_block_fails():
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("the send failed")
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0
