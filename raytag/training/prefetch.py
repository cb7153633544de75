"""Build a GPU epoch's next batches while the current one trains.

On a GPU, a step of a small audio CNN takes the device a few milliseconds, and the host
work that makes its batch (reading crops, gain, SpecAugment, mixup, pinning) took longer
than that: the GPU check measured it busy 8-30% of an epoch. A background thread that
builds batches a few steps ahead overlaps that host work with the step. A thread, not
DataLoader workers: the work is numpy gathers and torch ops that release the GIL, the
store is opened once per worker (not pickled into subprocesses), and the batches come in
exactly the order and with exactly the random draws of the serial loop, so a seeded run
trains on the same batches either way.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

_DONE = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def prefetched(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield `items` in order, made up to `depth` items ahead by a background thread.

    An error raised while making an item is raised here, at that item. Closing the
    iterator early (a `break`, or an error in the loop body) stops the thread before
    returning, so nothing touches the store after the loop has left."""
    if depth < 1:
        raise ValueError(f"prefetch depth must be at least 1, got {depth}")
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item) -> bool:
        """Put `item` once there is room; False if the consumer has gone."""
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not offer(item):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            offer(_Failed(error))
            return
        offer(_DONE)

    thread = threading.Thread(target=produce, name="raytag-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()
