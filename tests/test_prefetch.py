"""raytag.training.prefetch: batches made ahead in a thread come in order, errors reach the
loop at their item, and leaving the loop early stops the thread."""
from __future__ import annotations

import threading

import pytest

from raytag.config import Config, ConfigError
from raytag.training.prefetch import prefetched


def _threads() -> set:
    return {t for t in threading.enumerate() if t.name == "raytag-prefetch"}


def test_items_come_in_order_and_all_of_them():
    assert list(prefetched(iter(range(100)), depth=3)) == list(range(100))
    assert list(prefetched([], depth=1)) == []


def test_an_error_making_an_item_is_raised_at_that_item():
    def items():
        yield 1
        yield 2
        raise OSError("shard 7 is unreadable")

    got = []
    with pytest.raises(OSError, match="shard 7"):
        for item in prefetched(items()):
            got.append(item)
    assert got == [1, 2]
    assert not _threads()


def test_leaving_early_stops_the_thread_and_it_makes_at_most_depth_more():
    made = []

    def items():
        for i in range(1000):
            made.append(i)
            yield i

    for item in prefetched(items(), depth=2):
        if item == 4:
            break
    assert not _threads()  # joined before the loop moved on
    # items 0-4 were consumed; the thread may have made the queue's 2 and one it held
    assert 5 <= len(made) <= 5 + 2 + 1


def test_the_next_item_is_made_while_the_loop_holds_this_one():
    making_second = threading.Event()

    def items():
        yield 0
        making_second.set()
        yield 1

    it = prefetched(items(), depth=1)
    assert next(it) == 0
    # a serial loop would make item 1 only when asked for it; the thread makes it now
    assert making_second.wait(timeout=30)
    assert list(it) == [1]


def test_a_depth_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        next(prefetched(iter([1]), depth=0))
    with pytest.raises(ConfigError, match="prefetch_batches"):
        Config.from_dict({"train": {"prefetch_batches": -2}})
