"""Peak resident memory of a call, sampled by a background thread (same process)."""
from __future__ import annotations

import threading
import time

import psutil


def _anon() -> int:
    """Resident anonymous memory (bytes): RSS without file-backed (memory-mapped) pages; Linux only, else 0."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakRSS:
    """``with PeakRSS() as m: f()`` then ``m.extra`` is the peak RSS above the level at entry (bytes), and
    ``m.extra_anon`` the same without memory-mapped file pages (what the call allocated itself)."""

    def __init__(self, interval: float = 0.0005):
        self.interval = interval
        self.proc = psutil.Process()

    def __enter__(self):
        self.base = self.peak = self.proc.memory_info().rss
        self.base_anon = self.peak_anon = _anon()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self.peak_anon = max(self.peak_anon, _anon())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.peak_anon = max(self.peak_anon, _anon())
        self.extra = self.peak - self.base
        self.extra_anon = self.peak_anon - self.base_anon
