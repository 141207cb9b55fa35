"""Fail fast together: one rank's error stops every rank within seconds, not at a timeout.

A failing rank writes "rank N: <error>" under a key of the rendezvous store. Every rank runs a
watchdog thread on its own store connection; when the key appears (or the store is gone, which
means the rank hosting it died), it logs who failed and why, and exits the process non-zero.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import timedelta

import torch.distributed as dist

log = logging.getLogger(__name__)
FAIL_KEY = "rlinf/failure"


class FailureWatchdog:
    def __init__(self, host: str, port: int, rank: int, world_size: int, poll_s: float = 0.5):
        self.rank = rank
        self._stop = threading.Event()
        self._store = None
        try:
            self._store = dist.TCPStore(
                host,
                port,
                world_size,
                is_master=False,
                timeout=timedelta(seconds=30),
                wait_for_workers=False,
            )
        except Exception as e:  # noqa: BLE001 - the watchdog is best effort
            log.warning("failure watchdog disabled: cannot reach the store (%s)", e)
            return
        self._thread = threading.Thread(
            target=self._run, args=(poll_s,), daemon=True, name="rlinf-watchdog"
        )
        self._thread.start()

    def _run(self, poll_s: float) -> None:
        misses = 0
        while not self._stop.wait(poll_s):
            try:
                if self._store.check([FAIL_KEY]):
                    msg = self._store.get(FAIL_KEY).decode(errors="replace")
                    if self._stop.is_set():
                        return
                    log.error("stopping: %s", msg)
                    _hard_exit(1)
                misses = 0
            except Exception:  # noqa: BLE001
                if self._stop.is_set():
                    return
                misses += 1
                if misses >= 6:  # the store's host is gone: a rank died without reporting
                    log.error("stopping: lost the rendezvous store (the rank hosting it died)")
                    _hard_exit(1)

    def report(self, message: str) -> None:
        """Publish this rank's failure so every other rank stops."""
        if self._store is None:
            return
        try:
            self._store.set(FAIL_KEY, f"rank {self.rank} failed: {message}")
        except Exception:  # noqa: BLE001
            pass

    def close(self) -> None:
        self._stop.set()


def _hard_exit(code: int) -> None:
    logging.shutdown()
    os._exit(code)


def wait_and_exit(code: int, delay_s: float) -> None:
    """Give peers a moment to read the failure key, then leave without running finalizers."""
    time.sleep(delay_s)
    _hard_exit(code)
