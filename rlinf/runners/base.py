"""What every runner gets: the config, the topology, the output dir and a collective stop flag."""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from rlinf.config import RLinfConfig
from rlinf.dist.topology import Topology

log = logging.getLogger(__name__)


@dataclass
class StopSignal:
    """Set by SIGTERM/SIGINT (stop) or SIGUSR1 (checkpoint, then requeue under Slurm)."""

    event: threading.Event = field(default_factory=threading.Event)
    reason: str = ""

    def set(self, reason: str) -> None:
        self.reason = self.reason or reason
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()

    def install(self) -> None:
        """Route signals here; a second SIGINT/SIGTERM interrupts immediately."""

        def handler(signum, _frame):
            name = signal.Signals(signum).name
            if self.is_set() and signum in (signal.SIGINT, signal.SIGTERM):
                raise KeyboardInterrupt(f"second {name}")
            log.warning(
                "received %s: finishing the current step, then %s",
                name,
                "checkpointing and requeueing" if signum == signal.SIGUSR1 else "stopping",
            )
            self.set("requeue" if signum == signal.SIGUSR1 else "stop")

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            try:
                signal.signal(sig, handler)
            except ValueError:  # not the main thread (e.g. tests)
                pass


@dataclass
class RunContext:
    cfg: RLinfConfig
    topo: Topology
    output_dir: str
    stop: StopSignal = field(default_factory=StopSignal)

    def agreed_stop(self) -> str:
        """Collective: every rank learns whether any rank was asked to stop (and why)."""
        code = {"": 0, "stop": 1, "requeue": 2}.get(
            self.stop.reason, 1 if self.stop.is_set() else 0
        )
        if dist.is_initialized() and dist.get_world_size() > 1:
            t = torch.tensor([code], dtype=torch.int64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            code = int(t.item())
        return {0: "", 1: "stop", 2: "requeue"}[code]
