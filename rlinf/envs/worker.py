"""The env role: this rank's simulators, split into pipeline stages, with normalisation.

An env rank owns `env.train.total_num_envs / num_env_ranks` envs, split into
`rollout.pipeline_stage_num` stages that are stepped one after another so that the rollout
rank computes the actions of one stage while this rank steps the other. It turns simulator
output into the messages the rollout rank needs (normalised observations, rewards, episode
ends and the true final observations), keeps episode statistics with raw rewards, and runs
deterministic evaluation episodes on separate envs.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

import torch

from rlinf.config.env import EnvSplitConfig
from rlinf.dist.batch import TensorBatch
from rlinf.envs import make_env
from rlinf.envs.base import BatchedEnv, StepResult
from rlinf.envs.normalize import ObsNormalizer, RewardScaler


@dataclass
class EpisodeStats:
    """Sums over finished episodes, merged across ranks by the runner."""

    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    successes: list[bool] = field(default_factory=list)

    def add(
        self, res: StepResult, done: torch.Tensor | None = None, any_done: bool | None = None
    ) -> None:
        """Count the episodes that ended in ``res`` (``done``, ``any_done``: if known)."""
        done = res.done if done is None else done
        if not (bool(done.any()) if any_done is None else any_done):
            return
        self.returns += res.episode_return[done].tolist()
        self.lengths += res.episode_length[done].tolist()
        if res.episode_success is not None:
            self.successes += res.episode_success[done].tolist()

    def metrics(self, prefix: str) -> dict[str, tuple[float, int]]:
        """(sum, count) pairs, so the runner can average over ranks exactly."""
        out = {}
        if self.returns:
            out[f"{prefix}/return_mean"] = (sum(self.returns), len(self.returns))
            out[f"{prefix}/episode_len_mean"] = (float(sum(self.lengths)), len(self.lengths))
            out[f"{prefix}/num_episodes"] = (float(len(self.returns)), 1)
        if self.successes:
            out[f"{prefix}/success_rate"] = (float(sum(self.successes)), len(self.successes))
        return out


def _env_kwargs(split: EnvSplitConfig) -> tuple[str, dict]:
    params = dict(split.init_params)
    env_id = params.pop("id", None)
    if env_id is None:
        raise ValueError("env.train.init_params.id: set the simulator id, e.g. CartPole-v1")
    return env_id, params


def build_envs(split: EnvSplitConfig, num_envs: int, seed: int, auto_reset: bool) -> BatchedEnv:
    env_id, params = _env_kwargs(split)
    return make_env(
        split.env_type,
        env_id=env_id,
        num_envs=num_envs,
        seed=seed,
        max_episode_steps=split.max_episode_steps,
        auto_reset=auto_reset,
        ignore_terminations=split.ignore_terminations,
        group_size=split.group_size,
        vector_mode=split.vector_mode,
        init_params=params,
    )


class EnvWorker:
    """Simulators of one env rank."""

    def __init__(
        self,
        train: EnvSplitConfig,
        eval_split: EnvSplitConfig,
        env_rank: int,
        num_env_ranks: int,
        num_stages: int,
        gamma: float,
    ):
        self.train_cfg, self.eval_cfg = train, eval_split
        self.env_rank = env_rank
        self.num_envs = train.total_num_envs // num_env_ranks
        self.num_stages = num_stages
        per_stage = self.num_envs // num_stages
        self.auto_reset = train.auto_reset
        # distinct, reproducible seeds per env rank and stage
        self.stages = [
            build_envs(
                train, per_stage, train.seed * 1_000_003 + env_rank * 1009 + s, train.auto_reset
            )
            for s in range(num_stages)
        ]
        first = self.stages[0]
        self.observation_space = first.single_observation_space
        self.action_space = first.single_action_space
        obs_shape = tuple(self.observation_space.shape)
        self.obs_norm = ObsNormalizer(obs_shape) if train.normalize_obs else None
        self.rew_scale = (
            [RewardScaler(per_stage, gamma) for _ in range(num_stages)]
            if train.normalize_reward
            else None
        )
        self.stats = EpisodeStats()
        self._finished = [False] * num_stages
        self._eval: BatchedEnv | None = None  # the eval envs, kept between evaluations

    # -- train --------------------------------------------------------------------------
    def _norm(self, obs: torch.Tensor, update: bool) -> torch.Tensor:
        if self.obs_norm is None:
            return obs
        if update:
            self.obs_norm.rms.update(obs)
        return self.obs_norm.normalize(obs)

    def reset_message(self, stage: int) -> TensorBatch:
        """Reset one stage's envs and return its first observations."""
        obs = self.stages[stage].reset()
        self._finished[stage] = False
        return TensorBatch({"obs": self._norm(obs, update=True)})

    def step(self, stage: int, env_action: torch.Tensor) -> TensorBatch:
        """Step one stage; the message carries the next obs and this step's outcome."""
        res = self.stages[stage].step(env_action)
        done = res.done
        any_done = bool(done.any())
        if not self.auto_reset:  # with auto-reset no env ever waits for a reset
            self._finished[stage] = bool(res.finished.all())
        self.stats.add(res, done, any_done)
        reward = res.reward
        if self.rew_scale is not None:
            reward = self.rew_scale[stage](reward, done)
        obs = self._norm(res.obs, update=True)
        final_obs = self._norm(res.final_obs, update=False) if any_done else obs
        return TensorBatch(
            {
                "obs": obs,
                "reward": reward.float(),
                "terminated": res.terminated,
                "done": done,
                "final_obs": final_obs,
            }
        )

    def all_finished(self) -> bool:
        """Without auto-reset: every env of every stage has ended its episode."""
        return all(self._finished)

    def pop_stats(self) -> dict[str, tuple[float, int]]:
        out = self.stats.metrics("env")
        self.stats = EpisodeStats()
        return out

    # -- eval ---------------------------------------------------------------------------
    def eval_start(self, num_env_ranks: int) -> tuple[BatchedEnv, torch.Tensor]:
        """This rank's eval envs and their first observations, the same initial states every
        evaluation (comparable numbers). Gym envs are built once (simulators are slow to
        build) and reset to the seeds a fresh build would use; other adapters are rebuilt."""
        from rlinf.envs.gym_env import GymBatchedEnv, episode_seed

        n = max(1, self.eval_cfg.total_num_envs // num_env_ranks)
        base = self.eval_cfg.seed * 7919 + 104_729 + self.env_rank
        envs = self._eval
        if not isinstance(envs, GymBatchedEnv) or envs.num_envs != n:
            if envs is not None:
                envs.close()
            self._eval = envs = build_envs(self.eval_cfg, n, base, auto_reset=False)
            return envs, envs.reset()
        group = max(1, self.eval_cfg.group_size)
        return envs, envs.reset(seeds=[episode_seed(base, i // group, 0) for i in range(n)])

    def eval_obs(self, obs: torch.Tensor) -> torch.Tensor:
        return self._norm(obs, update=False)

    # -- checkpoint -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "stages": pickle.dumps(self.stages),
            "obs_norm": self.obs_norm.state_dict() if self.obs_norm else None,
            "rew_scale": [r.state_dict() for r in self.rew_scale] if self.rew_scale else None,
            "stats": self.stats,
        }

    def load_state_dict(self, state: dict) -> None:
        for env in self.stages:
            env.close()
        self.stages = pickle.loads(state["stages"])
        if self.obs_norm is not None and state["obs_norm"] is not None:
            self.obs_norm.load_state_dict(state["obs_norm"])
        if self.rew_scale is not None and state["rew_scale"] is not None:
            for r, s in zip(self.rew_scale, state["rew_scale"], strict=True):
                r.load_state_dict(s)
        self.stats = state["stats"]

    def close(self) -> None:
        for env in self.stages:
            env.close()
        if self._eval is not None:
            self._eval.close()
            self._eval = None
