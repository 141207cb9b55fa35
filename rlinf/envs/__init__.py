"""Simulator adapters behind one batched interface (:class:`BatchedEnv`).

``make_env(env_type, **kwargs)`` builds an adapter, importing it (and its simulator) only
when asked for, so that ``import rlinf.envs`` stays cheap and works without optional extras.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

from rlinf.envs.base import BatchedEnv, StepResult

__all__ = ["BatchedEnv", "GymBatchedEnv", "StepResult", "make_env"]


@dataclass(frozen=True)
class _Adapter:
    module: str
    cls: str
    package: str  # top-level import the simulator needs
    extra: str  # pip extra that installs it


_GYM = _Adapter("rlinf.envs.gym_env", "GymBatchedEnv", "gymnasium", "embodied")
_ADAPTERS: dict[str, _Adapter] = {
    "gym": _GYM,
    "gymnasium": _GYM,
    "mujoco": _GYM,
    "maniskill": _Adapter(
        "rlinf.envs.maniskill_env", "ManiSkillBatchedEnv", "mani_skill", "maniskill"
    ),
    "libero": _Adapter("rlinf.envs.libero_env", "LiberoBatchedEnv", "libero", "libero"),
}


def make_env(env_type: str, **kwargs: Any) -> BatchedEnv:
    """Build the batched env adapter for ``env_type`` with the adapter's keyword arguments.

    ``env_type``: "gym" (also "gymnasium", "mujoco"), "maniskill" or "libero". For gym the
    arguments are those of :class:`rlinf.envs.gym_env.GymBatchedEnv`.
    Raises ValueError for an unknown type and ImportError naming the pip extra when the
    simulator package is not installed.
    """
    adapter = _ADAPTERS.get(env_type.lower())
    if adapter is None:
        raise ValueError(f"env.env_type {env_type!r} is unknown; use one of {sorted(_ADAPTERS)}")
    if importlib.util.find_spec(adapter.package) is None:
        raise ImportError(
            f"env.env_type {env_type!r} needs the {adapter.package!r} package: "
            f"pip install rlinf[{adapter.extra}]"
        )
    if importlib.util.find_spec(adapter.module) is None:
        raise ValueError(f"env.env_type {env_type!r}: adapter module {adapter.module} is missing")
    return getattr(importlib.import_module(adapter.module), adapter.cls)(**kwargs)


def __getattr__(name: str) -> Any:
    # Lazy: importing the gym adapter imports gymnasium.
    if name == "GymBatchedEnv":
        from rlinf.envs.gym_env import GymBatchedEnv

        return GymBatchedEnv
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
