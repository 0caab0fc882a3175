"""`corral serve` and `corral worker` settle their heap once loaded (cli.settle_heap)."""

import gc
import sys

from corral.cli import settle_heap


def test_settle_heap_freezes_what_is_loaded_and_collects_the_young_generation_less_often():
    before, interval = gc.get_threshold(), sys.getswitchinterval()
    try:
        settle_heap()
        assert sys.getswitchinterval() == 0.001  # SQLite's thread gets the GIL back within 1 ms
        assert gc.get_freeze_count() > 10_000  # modules, classes: out of every collection's way
        assert gc.get_threshold()[0] >= 10_000
        garbage = []
        garbage.append(garbage)  # a cycle made after the freeze is still collected
        del garbage
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
        sys.setswitchinterval(interval)
