"""The batched simulator interface every env adapter implements.

An adapter owns ``num_envs`` copies of one simulator and speaks torch tensors on its
``device``: ``reset`` gives the first observations, ``step`` takes one action per env and
returns a :class:`StepResult`. Episodes end with ``terminated`` (a true terminal state: do not
bootstrap) or ``truncated`` (a time limit: bootstrap from ``final_obs``).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["BatchedEnv", "StepResult"]


@dataclass(frozen=True)
class StepResult:
    """What one batched step returns; every tensor has leading dim ``N = num_envs``.

    Attributes:
        obs: [N, ...] the observation to act on next. Where an episode ended and the env
            auto-resets, this is the new episode's first observation.
        reward: [N] float32 reward for the action just taken.
        terminated: [N] bool, the episode reached a terminal state at this step.
        truncated: [N] bool, the episode was cut (time limit) at this step.
        final_obs: [N, ...] the observation the action led to, i.e. the TRUE last observation
            of the episodes that ended at this step (rows where ``done``); on other rows it
            equals ``obs``. Use it to bootstrap the value of truncated episodes. May share
            memory with ``obs`` when no episode ended.
        success: [N] bool task success reported by the env at this step, or None when the env
            does not report success.
        episode_return: [N] float32 undiscounted return of the episode that ended at this step
            (valid where ``done``, 0 elsewhere).
        episode_length: [N] int64 number of steps of that episode (valid where ``done``).
        episode_success: [N] bool, the ended episode reported success at any of its steps
            (valid where ``done``), or None when the env does not report success.
        finished: [N] bool, the env's episode is over and it waits for ``reset()``. Only
            without auto-reset; then it stays True on the following steps (which bring reward
            0 and the frozen last observation) and can serve as a loss mask. All False with
            auto-reset.
    """

    obs: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    final_obs: torch.Tensor
    success: torch.Tensor | None
    episode_return: torch.Tensor
    episode_length: torch.Tensor
    episode_success: torch.Tensor | None
    finished: torch.Tensor

    @property
    def done(self) -> torch.Tensor:
        """[N] bool, an episode ended at this step (``terminated | truncated``)."""
        return self.terminated | self.truncated


class BatchedEnv(abc.ABC):
    """``num_envs`` simulators stepped together, with tensors in and out.

    Implementations set ``num_envs``, ``device``, ``single_observation_space`` and
    ``single_action_space`` (gymnasium spaces describing one env) in ``__init__``.
    """

    num_envs: int
    device: torch.device
    single_observation_space: Any
    single_action_space: Any

    @abc.abstractmethod
    def reset(self, seeds: list[int] | None = None) -> torch.Tensor:
        """Reset every env and return the first observations [N, ...].

        ``seeds`` gives one seed per env (or per group of envs where the adapter groups them);
        None draws them deterministically from the adapter's base seed.
        """

    @abc.abstractmethod
    def step(self, actions: torch.Tensor) -> StepResult:
        """Apply one action per env ([N, ...]) and return the batched outcome."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the simulators (processes, renderers)."""

    def __enter__(self) -> BatchedEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
