"""The synchronous vector backend: gymnasium envs stepped in one plain loop.

Semantics are those of ``gymnasium.vector.SyncVectorEnv(autoreset_mode=SAME_STEP)`` for what
:class:`~rlinf.envs.gym_env.GymBatchedEnv` reads: an env whose episode ends is reset in the
same step, its true last observation goes to ``infos["final_obs"]`` and its step info to
``infos["final_info"]``. Unlike gymnasium's, infos are not merged key by key into masked
arrays at every step (the largest cost of a vector step for fast simulators): only the keys
named in ``info_keys`` are gathered, as boolean arrays, and only on steps that report them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["SyncEnvLoop"]


class SyncEnvLoop:
    """``len(env_fns)`` envs, stepped one after another in this process.

    Args:
        env_fns: callables that build one env each.
        info_keys: info entries to gather (as bool arrays, False where an env did not set
            them), at top level and in ``final_info``.
    """

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], info_keys: Sequence[str]):
        self.envs = [fn() for fn in env_fns]
        self.num_envs = len(self.envs)
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        space = self.single_observation_space
        shape = tuple(space.shape or ())
        self._obs = np.zeros((self.num_envs, *shape), dtype=space.dtype or np.float32)
        self._info_keys = tuple(info_keys)

    def reset(self, seed: Sequence[int] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        infos: dict[str, Any] = {}
        for i, env in enumerate(self.envs):
            obs, info = env.reset(seed=None if seed is None else int(seed[i]))
            self._obs[i] = obs
            self._gather(infos, info, i)
        return self._obs.copy(), infos

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        n = self.num_envs
        reward = np.zeros(n, dtype=np.float64)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        infos: dict[str, Any] = {}
        for i, env in enumerate(self.envs):
            obs, r, term, trunc, info = env.step(actions[i])
            reward[i] = r
            if term or trunc:
                terminated[i] = term
                truncated[i] = trunc
                if "final_obs" not in infos:
                    infos["final_obs"] = np.full(n, None, dtype=object)
                    infos["final_info"] = {}
                infos["final_obs"][i] = obs
                self._gather(infos["final_info"], info, i)
                obs, info = env.reset()
            self._obs[i] = obs
            self._gather(infos, info, i)
        return self._obs.copy(), reward, terminated, truncated, infos

    def _gather(self, out: dict[str, Any], info: dict[str, Any], i: int) -> None:
        if not info:
            return
        for key in self._info_keys:
            if key in info:
                if key not in out:
                    out[key] = np.zeros(self.num_envs, dtype=bool)
                out[key][i] = bool(info[key])

    def close(self) -> None:
        for env in self.envs:
            env.close()
