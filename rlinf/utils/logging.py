"""Logging set up once per process: rank 0 at INFO, other ranks at WARNING unless per_rank."""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s [rank %(rank)s] %(levelname)s %(name)s: %(message)s"


class _RankFilter(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


def setup_logging(rank: int = 0, per_rank: bool = False, level: str = "INFO") -> None:
    """Configure the root logger for this process (idempotent: replaces our handler)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_rlinf", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._rlinf = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    handler.addFilter(_RankFilter(rank))
    root.addHandler(handler)
    chosen = level if (rank == 0 or per_rank) else "WARNING"
    root.setLevel(chosen)
    for noisy in ("torch.distributed", "urllib3", "PIL", "matplotlib", "filelock"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
