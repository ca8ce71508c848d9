"""Background-thread prefetching of an iterator (the batch iterators use it)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator


class Prefetch:
    """Runs an iterator in a daemon thread, `depth` items ahead; re-raises its errors."""

    _END = object()

    def __init__(self, it: Iterator, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(it,), daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, it):
        try:
            for item in it:
                if not self._put((item, None)):
                    return
            self._put((self._END, None))
        except BaseException as e:  # handed to the consumer, raised there
            self._put((self._END, e))

    def __next__(self):
        item, error = self._queue.get()
        if item is self._END:
            # The producer has stopped, so there is room: later calls end too.
            self._queue.put((self._END, None))
            if error is not None:
                raise error
            raise StopIteration
        return item

    def close(self):
        """Asks the thread to stop; it exits within ~0.1 s."""
        self._stop.set()

    @property
    def thread(self) -> threading.Thread:
        return self._thread
