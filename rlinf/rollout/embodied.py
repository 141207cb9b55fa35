"""The rollout role for embodied runs: the policy copy that answers env ranks with actions.

It records what training needs (observations, actions, log-probs, values, rewards, episode
ends) and, at the end of the horizon, turns the trajectory into advantages and returns: GAE,
or group-relative (GRPO) scores of one episode per env. GAE needs the value of the observation
after each step: that is the value of the next acting step (computed by ``act`` anyway), except
where an episode ended, where it is the value of the true final observation (only those rows
run the critic, so truncation bootstraps correctly), and after the last step, where
:meth:`record_last_obs` runs it once. Advantages are computed here, on whole per-env
sequences, so the batch that goes to the actor can be split anywhere.
"""

from __future__ import annotations

import torch
from torch import nn

from rlinf.algorithms import episode_mask, gae, group_advantages, next_values_from
from rlinf.config.algorithm import AlgorithmConfig
from rlinf.dist.batch import TensorBatch


class EmbodiedRollout:
    def __init__(self, policy: nn.Module, device: torch.device, algo: AlgorithmConfig):
        self.policy = policy.to(device).eval()
        self.device = device
        self.algo = algo
        self.version = -1
        self._steps: list[dict[str, torch.Tensor]] = []
        self._zeros: dict[torch.Size, torch.Tensor] = {}

    # inference_mode: the cheapest autograd-free mode. Its tensors cannot be saved for a
    # backward pass: finish() stacks them into ordinary tensors before the actor sees them.
    @torch.inference_mode()
    def act(self, obs: torch.Tensor, deterministic: bool = False):
        return self.policy.act(self._here(obs), deterministic=deterministic)

    @torch.inference_mode()
    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy.value(self._here(obs))

    def _here(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.device == self.device else x.to(self.device)

    # -- trajectory -----------------------------------------------------------------------
    def begin(self, num_stages: int) -> None:
        """Start a horizon: per stage, a list of per-step records."""
        self._steps = [[] for _ in range(num_stages)]
        self._last_value: list[torch.Tensor | None] = [None] * num_stages

    def record_action(self, stage: int, obs: torch.Tensor, out) -> None:
        self._steps[stage].append(
            {
                "obs": self._here(obs),
                "action": out.action,
                "logprob": out.logprob,
                "value": out.value,
            }
        )

    @torch.inference_mode()
    def record_outcome(self, stage: int, msg: TensorBatch) -> None:
        """Attach the outcome of the last recorded step of ``stage`` (reward, ends, and the
        value of the true final observation where an episode ended)."""
        rec = self._steps[stage][-1]
        done = self._here(msg["done"])
        if self.algo.adv_type == "gae":
            if bool(done.any()):
                rows = done.nonzero().squeeze(-1)
                final_value = torch.zeros_like(rec["value"])
                final_value[rows] = self.value(self._here(msg["final_obs"])[rows])
            else:  # read only where done: one shared zero row serves every such step
                final_value = self._zeros.get(rec["value"].shape)
                if final_value is None:
                    final_value = self._zeros[rec["value"].shape] = torch.zeros_like(rec["value"])
            rec["final_value"] = final_value
        rec["reward"] = self._here(msg["reward"])
        rec["terminated"] = self._here(msg["terminated"])
        rec["done"] = done

    @torch.inference_mode()
    def record_last_obs(self, stage: int, obs: torch.Tensor) -> None:
        """The observation after the horizon's last step: its value bootstraps GAE."""
        if self.algo.adv_type == "gae" and self._steps[stage]:
            self._last_value[stage] = self.value(obs)

    def finish(self) -> TensorBatch:
        """Stack the horizon ([T, N] per key, stages side by side) and compute advantages.

        Returns flat samples [T*N] for the actor.
        """
        stages = [
            {k: torch.stack([r[k] for r in steps]) for k in steps[0]} for steps in self._steps
        ]
        a = self.algo
        if a.adv_type == "gae":
            for st, last in zip(stages, self._last_value, strict=True):
                assert last is not None, "record_last_obs() was not called for a stage"
                st["next_value"] = next_values_from(
                    st["value"], last, st["done"], st.pop("final_value")
                )
        traj = {k: torch.cat([s[k] for s in stages], dim=1) for k in stages[0]}
        if a.adv_type == "gae":
            adv, ret = gae(
                traj["reward"],
                traj["value"],
                traj["next_value"],
                traj["terminated"],
                traj["done"],
                a.gamma,
                a.gae_lambda,
            )
            mask = torch.ones_like(adv, dtype=torch.bool)
        else:  # grpo / rloo on episode scores: one episode per env per horizon
            mask = episode_mask(traj["done"])
            scores = (traj["reward"] * mask).sum(0)
            if a.adv_type == "grpo":
                per_env = group_advantages(
                    scores, a.group_size, normalize_std=a.group_std_normalize
                )
            else:
                from rlinf.algorithms import rloo_advantages

                per_env = rloo_advantages(scores, a.group_size)
            adv = per_env.unsqueeze(0).expand_as(traj["reward"]) * mask
            ret = torch.zeros_like(adv)
        T, N = adv.shape
        flat = lambda x: x.reshape(T * N, *x.shape[2:])  # noqa: E731
        self._steps, self._last_value = [], []
        return TensorBatch(
            {
                "obs": flat(traj["obs"]),
                "action": flat(traj["action"]),
                "logprob": flat(traj["logprob"]),
                "value": flat(traj["value"]),
                "advantage": flat(adv),
                "return": flat(ret),
                "mask": flat(mask),
            },
            meta={"version": self.version},
        )

    def load_weights(self, weights) -> None:
        from rlinf.dist.weight_sync import load_into_module

        load_into_module(self.policy)(weights)
