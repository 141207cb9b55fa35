"""Checkpoints: `<output_dir>/checkpoints/global_step_N/`, written by every rank, made visible atomically.

Layout of one checkpoint:
    actor/            torch.distributed.checkpoint (DCP) of the actor's model and optimizer
    rank_<r>.pt       per-rank state (RNG states, env state, normaliser statistics, counters)
    meta.json         written last by rank 0: step, world size, time

Everything is written into `global_step_N.tmp/`; after a barrier rank 0 writes meta.json and
renames the directory, so a checkpoint either exists whole or not at all. A run killed while
writing leaves only a `.tmp` directory, which resume ignores and the next save removes.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
_STEP_DIR = re.compile(r"^global_step_(\d+)$")


def capture_rng() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with meta.json), oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / "meta.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def resolve_resume_dir(resume_dir: str | None, output_dir: str) -> Path | None:
    """`auto`: newest complete checkpoint of output_dir (None if there is none); else that path."""
    if not resume_dir:
        return None
    if resume_dir == "auto":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(resume_dir)
    if not (path / "meta.json").is_file():
        raise FileNotFoundError(
            f"runner.resume_dir: {path} is not a complete checkpoint (no meta.json); "
            f"use 'auto' or one of {[str(p) for _, p in list_checkpoints(output_dir)] or 'none found'}"
        )
    return path


class CheckpointWriter:
    """Collective save of one checkpoint; every rank calls `save` with its own parts."""

    def __init__(self, output_dir: str, keep: int = 2):
        self.root = Path(output_dir) / "checkpoints"
        self.keep = keep

    def save(
        self,
        step: int,
        rank_state: dict[str, Any],
        actor_state: dict[str, Any] | None = None,
        actor_group: dist.ProcessGroup | None = None,
    ) -> Path:
        rank = dist.get_rank() if dist.is_initialized() else 0
        final = self.root / f"global_step_{step}"
        tmp = self.root / f"global_step_{step}.tmp"
        t0 = time.monotonic()
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob("*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        _barrier()
        if actor_state is not None:
            import torch.distributed.checkpoint as dcp

            dcp.save(actor_state, checkpoint_id=str(tmp / "actor"), process_group=actor_group)
        part = tmp / f"rank_{rank}.pt"
        torch.save(rank_state, part)
        _fsync(part)
        _barrier()
        if rank == 0:
            meta = {
                "step": step,
                "world_size": dist.get_world_size() if dist.is_initialized() else 1,
                "time": time.time(),
            }
            (tmp / "meta.json").write_text(json.dumps(meta))
            _fsync(tmp / "meta.json")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.root)
            self._prune()
            log.info("checkpoint saved: %s (%.2fs)", final, time.monotonic() - t0)
        _barrier()
        return final

    def _prune(self) -> None:
        if self.keep <= 0:
            return
        for _, path in list_checkpoints(self.root.parent)[: -self.keep]:
            shutil.rmtree(path, ignore_errors=True)


def load_rank_state(path: Path) -> dict[str, Any]:
    rank = dist.get_rank() if dist.is_initialized() else 0
    meta = json.loads((path / "meta.json").read_text())
    world = dist.get_world_size() if dist.is_initialized() else 1
    if meta["world_size"] != world:
        raise RuntimeError(
            f"checkpoint {path} was written by {meta['world_size']} ranks but this run has {world}; "
            "resume with the same placement"
        )
    return torch.load(path / f"rank_{rank}.pt", weights_only=False)


def load_actor_state(
    path: Path, state: dict[str, Any], actor_group: dist.ProcessGroup | None
) -> None:
    """Load DCP actor state in place into ``state`` (model/optimizer state dicts)."""
    import torch.distributed.checkpoint as dcp

    dcp.load(state, checkpoint_id=str(path / "actor"), process_group=actor_group)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
