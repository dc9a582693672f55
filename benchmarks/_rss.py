"""Peak resident memory of a call, sampled by a background thread (same process)."""
from __future__ import annotations

import threading
import time

import psutil


class PeakRSS:
    """``with PeakRSS() as m: f()`` then ``m.extra`` is the peak RSS above the level at entry (bytes)."""

    def __init__(self, interval: float = 0.0005):
        self.interval = interval
        self.proc = psutil.Process()

    def __enter__(self):
        self.base = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.extra = self.peak - self.base
