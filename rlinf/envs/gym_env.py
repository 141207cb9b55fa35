"""Gymnasium adapter: ``num_envs`` gymnasium envs behind the :class:`BatchedEnv` interface.

Built on :class:`~rlinf.envs.sync_loop.SyncEnvLoop` (sync, the default) or gymnasium's
AsyncVectorEnv, both in SAME_STEP auto-reset mode, so the true last observation of an episode
is available at the step it ends. Each sub-env is wrapped in
:class:`_EpisodeControl`, which runs inside the worker (also for async) and
- draws every reset seed from ``(seed, group, episode counter)``: envs of one group share the
  seed of their k-th episode, and a run is reproducible;
- hides terminations when ``ignore_terminations`` is set;
- freezes a finished env (reward 0, last obs) when auto-reset is off.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rlinf.envs.base import BatchedEnv, StepResult

logger = logging.getLogger(__name__)

__all__ = ["GymBatchedEnv", "episode_seed"]

_SUCCESS = "rlinf_success"
_TERMINATED = "rlinf_terminated"
_TRUNCATED = "rlinf_truncated"
_SUCCESS_SOURCES = ("success", "is_success")


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One round of the splitmix64 finaliser: a cheap, well-mixing 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def episode_seed(base_seed: int, group: int, episode: int) -> int:
    """Reset seed (32-bit) of the ``episode``-th episode (0-based) of env group ``group``.

    A chained splitmix64 hash of the three numbers, so nearby base seeds, groups and episodes
    give unrelated seeds; cheap enough to run at every reset.
    """
    return _splitmix64(_splitmix64(_splitmix64(base_seed) ^ group) ^ episode) >> 32


class _EpisodeControl(gym.Wrapper):
    """Per-sub-env seeding, termination masking and freezing (runs in the worker process)."""

    def __init__(
        self,
        env: gym.Env,
        base_seed: int,
        group: int,
        ignore_terminations: bool,
        freeze_on_done: bool,
    ) -> None:
        super().__init__(env)
        self._base_seed = base_seed
        self._group = group
        self._ignore_terminations = ignore_terminations
        self._freeze_on_done = freeze_on_done
        self._episode = 0
        self._frozen = False
        self._last_obs: Any = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is None:
            seed = episode_seed(self._base_seed, self._group, self._episode)
        self._episode += 1
        self._frozen = False
        obs, info = self.env.reset(seed=int(seed), options=options)
        self._last_obs = obs
        return obs, info

    def step(self, action: Any):
        if self._frozen:
            return self._last_obs, 0.0, False, False, {}
        obs, reward, terminated, truncated, info = self.env.step(action)
        for key in _SUCCESS_SOURCES:
            if key in info:
                info = {**info, _SUCCESS: bool(info[key])}
                break
        if self._ignore_terminations:
            terminated = False
        if not self._freeze_on_done:
            return obs, reward, terminated, truncated, info
        # Without auto-reset the vector env must not see the episode end (it would reset):
        # report the flags through info and freeze.
        self._last_obs = obs
        self._frozen = bool(terminated or truncated)
        info = {**info, _TERMINATED: bool(terminated), _TRUNCATED: bool(truncated)}
        return obs, reward, False, False, info


def _make_single_env(
    env_id: str,
    max_episode_steps: int | None,
    init_params: dict[str, Any],
    base_seed: int,
    group: int,
    ignore_terminations: bool,
    freeze_on_done: bool,
) -> gym.Env:
    """Build one wrapped sub-env (module-level so that async workers can pickle it)."""
    env = gym.make(
        env_id, max_episode_steps=max_episode_steps, disable_env_checker=True, **init_params
    )
    return _EpisodeControl(env, base_seed, group, ignore_terminations, freeze_on_done)


def _info_array(infos: dict[str, Any], key: str, num_envs: int) -> np.ndarray:
    """A boolean per-env info entry, False where the env did not set it."""
    value = infos.get(key)
    return np.zeros(num_envs, dtype=bool) if value is None else value.astype(bool)


class GymBatchedEnv(BatchedEnv):
    """Gymnasium envs (classic control, MuJoCo, anything ``gym.make`` builds) as a batch.

    Args:
        env_id: gymnasium id, e.g. "CartPole-v1", "HalfCheetah-v5".
        num_envs: number of sub-envs N.
        seed: base seed (>= 0); every reset seed derives from it (see :func:`episode_seed`).
        device: where returned tensors live.
        max_episode_steps: time limit (None keeps the env's registered limit).
        auto_reset: reset an env in the step its episode ends (``obs`` is then the new
            episode's first observation). If False, a finished env stays finished (reward 0,
            last observation, ``finished`` True) until :meth:`reset`.
        ignore_terminations: a termination does not end the episode and is reported as
            ``terminated`` False; only truncation ends it.
        group_size: envs ``i*group_size .. (i+1)*group_size-1`` share their reset seeds
            (GRPO groups). Must divide ``num_envs``.
        vector_mode: "sync" (one process) or "async" (one worker process per env).
        init_params: extra keyword arguments for ``gym.make``.
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        seed: int,
        device: str | torch.device = "cpu",
        max_episode_steps: int | None = None,
        auto_reset: bool = True,
        ignore_terminations: bool = False,
        group_size: int = 1,
        vector_mode: str = "sync",
        init_params: dict[str, Any] | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"env.num_envs must be >= 1, got {num_envs}")
        if group_size < 1 or num_envs % group_size != 0:
            raise ValueError(
                f"env.group_size ({group_size}) must be >= 1 and divide env.num_envs ({num_envs})"
            )
        if seed < 0:
            raise ValueError(f"env seed must be >= 0, got {seed}")
        if vector_mode not in ("sync", "async"):
            raise ValueError(f"env.vector_mode must be 'sync' or 'async', got {vector_mode!r}")

        self.env_id = env_id
        self.num_envs = num_envs
        self.group_size = group_size
        self.num_groups = num_envs // group_size
        self.seed = seed
        self.device = torch.device(device)
        self._on_cpu = self.device.type == "cpu"
        self.auto_reset = auto_reset
        self.ignore_terminations = ignore_terminations

        env_fns = [
            functools.partial(
                _make_single_env,
                env_id,
                max_episode_steps,
                dict(init_params or {}),
                seed,
                i // group_size,
                ignore_terminations,
                not auto_reset,
            )
            for i in range(num_envs)
        ]
        mode = gym.vector.AutoresetMode.SAME_STEP
        if vector_mode == "sync":
            from rlinf.envs.sync_loop import SyncEnvLoop

            self._vec = SyncEnvLoop(env_fns, info_keys=(_SUCCESS, _TERMINATED, _TRUNCATED))
        else:
            self._vec = gym.vector.AsyncVectorEnv(env_fns, copy=False, autoreset_mode=mode)

        self.single_observation_space = self._vec.single_observation_space
        self.single_action_space = self._vec.single_action_space
        obs_space, act_space = self.single_observation_space, self.single_action_space
        if isinstance(obs_space, gym.spaces.Box):
            self._obs_dtype = np.uint8 if obs_space.dtype == np.uint8 else np.float32
        elif isinstance(obs_space, gym.spaces.Discrete):
            self._obs_dtype = np.float32
        else:
            self.close()
            raise ValueError(
                f"{env_id}: observation space {obs_space} is not supported (Box or Discrete); "
                "flatten it with a gymnasium wrapper through a registered env id"
            )
        if isinstance(act_space, gym.spaces.Discrete):
            self._action_dtype = np.int64
        elif isinstance(act_space, gym.spaces.Box):
            self._action_dtype = act_space.dtype
        else:
            self.close()
            raise ValueError(f"{env_id}: action space {act_space} is not supported (Box/Discrete)")

        self._ep_return = np.zeros(num_envs, dtype=np.float64)
        self._ep_length = np.zeros(num_envs, dtype=np.int64)
        self._ep_success = np.zeros(num_envs, dtype=bool)
        self._finished = np.zeros(num_envs, dtype=bool)
        self._reports_success = False
        self._was_reset = False
        logger.debug("built %s x%d (%s, group_size=%d)", env_id, num_envs, vector_mode, group_size)

    def _on_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self._on_cpu else tensor.to(self.device, non_blocking=True)

    def _to_tensor(self, array: np.ndarray) -> torch.Tensor:
        return self._on_device(torch.from_numpy(array))

    def reset(self, seeds: list[int] | None = None) -> torch.Tensor:
        """Reset all envs; ``seeds`` has one entry per env or one per group."""
        if seeds is not None:
            seeds = [int(s) for s in seeds]
            if len(seeds) == self.num_groups:
                seeds = [s for s in seeds for _ in range(self.group_size)]
            elif len(seeds) != self.num_envs:
                raise ValueError(
                    f"reset(seeds=...) needs {self.num_envs} seeds (one per env) or "
                    f"{self.num_groups} (one per group), got {len(seeds)}"
                )
        obs, _ = self._vec.reset(seed=seeds)
        self._ep_return[:] = 0.0
        self._ep_length[:] = 0
        self._ep_success[:] = False
        self._finished[:] = False
        self._was_reset = True
        return self._to_tensor(obs.astype(self._obs_dtype))

    def step(self, actions: torch.Tensor) -> StepResult:
        """Step every env with ``actions`` [N, ...] (int64 [N] for discrete spaces)."""
        if not self._was_reset:
            raise RuntimeError("GymBatchedEnv.step() called before reset()")
        act = actions.detach()
        if act.device.type != "cpu":
            act = act.cpu()
        act_np = act.numpy()
        if act_np.dtype != self._action_dtype:
            act_np = act_np.astype(self._action_dtype)

        obs, reward, terminated, truncated, infos = self._vec.step(act_np)
        n = self.num_envs
        if not self.auto_reset:
            terminated = _info_array(infos, _TERMINATED, n)
            truncated = _info_array(infos, _TRUNCATED, n)
        done = terminated | truncated
        any_done = bool(done.any())
        success = self._success(infos, done)

        alive = ~self._finished
        self._ep_return += reward
        self._ep_length += alive
        if success is not None:
            self._ep_success |= success & alive
        if any_done:
            ep_return = np.where(done, self._ep_return, 0.0).astype(np.float32)
            ep_length = np.where(done, self._ep_length, 0)
            ep_success = done & self._ep_success
            self._ep_return[done] = 0.0
            self._ep_length[done] = 0
            self._ep_success[done] = False
            if not self.auto_reset:
                self._finished |= done
        else:
            ep_return = np.zeros(n, dtype=np.float32)
            ep_length = np.zeros(n, dtype=np.int64)
            ep_success = np.zeros(n, dtype=bool)

        obs_np = obs.astype(self._obs_dtype)
        obs_t = torch.from_numpy(obs_np)
        final_obs_t = obs_t
        if any_done and self.auto_reset:
            # Loops over the ended episodes only; numpy row writes are far cheaper than a
            # torch index_put for these small batches.
            final_np = obs_np.copy()
            final_obs = infos["final_obs"]
            for i in np.flatnonzero(done):
                final_np[i] = final_obs[i]
            final_obs_t = torch.from_numpy(final_np)

        return StepResult(
            obs=self._on_device(obs_t),
            reward=self._to_tensor(reward.astype(np.float32)),
            terminated=self._to_tensor(terminated),
            truncated=self._to_tensor(truncated),
            final_obs=self._on_device(final_obs_t),
            success=None if success is None else self._to_tensor(success),
            episode_return=self._to_tensor(ep_return),
            episode_length=self._to_tensor(ep_length),
            episode_success=self._to_tensor(ep_success) if self._reports_success else None,
            finished=self._to_tensor(self._finished.copy()),
        )

    def _success(self, infos: dict[str, Any], done: np.ndarray) -> np.ndarray | None:
        """[N] success at this step, or None while the env has never reported success."""
        final_info = infos.get("final_info") if self.auto_reset else None
        top = infos.get(_SUCCESS)
        fin = None if final_info is None else final_info.get(_SUCCESS)
        if top is None and fin is None:
            return np.zeros(self.num_envs, dtype=bool) if self._reports_success else None
        self._reports_success = True
        success = np.zeros(self.num_envs, dtype=bool) if top is None else top.astype(bool)
        if fin is not None:
            # Envs that auto-reset report the reset's info at top level; their step's info is
            # in final_info.
            success = np.where(done, fin.astype(bool), success)
        return success

    def close(self) -> None:
        self._vec.close()
