"""Running observation normalisation and reward scaling (as SB3's VecNormalize does).

Statistics are kept in float64 on the CPU. Each class has ``state_dict()`` /
``load_state_dict()`` made of plain tensors and floats so that a checkpoint can save them, and
an ``update`` switch: evaluation normalises with frozen statistics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

logger = logging.getLogger(__name__)

__all__ = ["ObsNormalizer", "RewardScaler", "RunningMeanStd", "combine_moments"]


def combine_moments(
    mean_a: torch.Tensor,
    var_a: torch.Tensor,
    count_a: float,
    mean_b: torch.Tensor,
    var_b: torch.Tensor,
    count_b: float,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mean, population variance and count of the union of two samples (Chan et al.).

    Shapes: ``mean_*``/``var_*`` are [*shape]; counts are sample counts (either may be 0).
    """
    total = count_a + count_b
    if total == 0:
        return mean_a.clone(), var_a.clone(), 0.0
    delta = mean_b - mean_a
    mean = mean_a + delta * (count_b / total)
    m2 = var_a * count_a + var_b * count_b + delta.square() * (count_a * count_b / total)
    return mean, m2 / total, float(total)


class RunningMeanStd:
    """Running mean and population variance of samples of shape ``shape``.

    Starts from count 0 (mean 0, var 1 until the first update), so after updates it equals the
    mean/var of all the data seen exactly (SB3 starts from a count of 1e-4 instead).
    """

    def __init__(self, shape: Sequence[int] = ()) -> None:
        self.shape = tuple(shape)
        self.mean = torch.zeros(self.shape, dtype=torch.float64)
        self.var = torch.ones(self.shape, dtype=torch.float64)
        self.count = 0.0

    def update(self, x: torch.Tensor) -> None:
        """Add a batch ``x`` [B, *shape]."""
        x = x.detach().to(device="cpu", dtype=torch.float64).reshape(-1, *self.shape)
        if x.shape[0] == 0:
            return
        self.update_from_moments(x.mean(0), x.var(0, correction=0), x.shape[0])

    def update_from_moments(self, mean: torch.Tensor, var: torch.Tensor, count: float) -> None:
        """Add a batch given by its mean, population variance and count (e.g. from other ranks)."""
        self.mean, self.var, self.count = combine_moments(
            self.mean, self.var, self.count, mean.double().cpu(), var.double().cpu(), float(count)
        )

    @property
    def std(self) -> torch.Tensor:
        return self.var.sqrt()

    @classmethod
    def merge(cls, parts: Sequence[RunningMeanStd]) -> RunningMeanStd:
        """Statistics of the union of the data behind ``parts`` (e.g. one per env rank)."""
        if not parts:
            raise ValueError("RunningMeanStd.merge needs at least one part")
        out = cls(parts[0].shape)
        for part in parts:
            out.update_from_moments(part.mean, part.var, part.count)
        return out

    def state_dict(self) -> dict[str, torch.Tensor | float]:
        return {"mean": self.mean.clone(), "var": self.var.clone(), "count": self.count}

    def load_state_dict(self, state: dict[str, torch.Tensor | float]) -> None:
        mean = torch.as_tensor(state["mean"], dtype=torch.float64)
        if tuple(mean.shape) != self.shape:
            raise ValueError(
                f"normalizer state has shape {tuple(mean.shape)}, expected {self.shape}: "
                "the checkpoint was saved for another observation space"
            )
        self.mean = mean.clone()
        self.var = torch.as_tensor(state["var"], dtype=torch.float64).clone()
        self.count = float(state["count"])


class ObsNormalizer:
    """``clip((obs - mean) / sqrt(var + eps), -clip, clip)`` with running statistics.

    Calling it first adds the batch to the statistics when ``update`` is True (training), then
    normalises; the output is float32 on the input's device.
    """

    def __init__(
        self, shape: Sequence[int], clip: float = 10.0, epsilon: float = 1e-8, update: bool = True
    ) -> None:
        self.rms = RunningMeanStd(shape)
        self.clip = clip
        self.epsilon = epsilon
        self.update = update

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        if self.update:
            self.rms.update(obs)
        return self.normalize(obs)

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        """Normalise ``obs`` [B, *shape] without touching the statistics."""
        mean = self.rms.mean.to(device=obs.device, dtype=torch.float32)
        std = (self.rms.var + self.epsilon).sqrt().to(device=obs.device, dtype=torch.float32)
        return ((obs.float() - mean) / std).clamp(-self.clip, self.clip)

    def state_dict(self) -> dict[str, torch.Tensor | float]:
        return self.rms.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor | float]) -> None:
        self.rms.load_state_dict(state)


class RewardScaler:
    """Divide rewards by the running std of a discounted return, per env (VecNormalize).

    Per step: ``ret = gamma * ret + reward``; the statistics take ``ret`` (when ``update``);
    the output is ``clip(reward / sqrt(var + eps))``; ``ret`` restarts at 0 where ``done``.
    The running return itself is state and is saved too.
    """

    def __init__(
        self,
        num_envs: int,
        gamma: float,
        clip: float = 10.0,
        epsilon: float = 1e-8,
        update: bool = True,
    ) -> None:
        self.rms = RunningMeanStd(())
        self.returns = torch.zeros(num_envs, dtype=torch.float64)
        self.gamma = gamma
        self.clip = clip
        self.epsilon = epsilon
        self.update = update

    def __call__(self, reward: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        """Scale ``reward`` [N] (float32 out, input's device); ``done`` [N] bool ends returns."""
        r64 = reward.detach().to(device="cpu", dtype=torch.float64)
        self.returns = self.returns * self.gamma + r64
        if self.update:
            self.rms.update(self.returns)
        scaled = self.scale(reward)
        self.returns[done.to("cpu", torch.bool)] = 0.0
        return scaled

    def scale(self, reward: torch.Tensor) -> torch.Tensor:
        """Scale ``reward`` without touching any state."""
        std = float((self.rms.var + self.epsilon).sqrt())
        return (reward.float() / std).clamp(-self.clip, self.clip)

    def state_dict(self) -> dict[str, torch.Tensor | float]:
        return {**self.rms.state_dict(), "returns": self.returns.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor | float]) -> None:
        self.rms.load_state_dict(state)
        returns = torch.as_tensor(state["returns"], dtype=torch.float64)
        if returns.shape != self.returns.shape:
            # A resume with another env count: the running returns restart, the scale is kept.
            logger.warning(
                "reward scaler state has %d envs, now %d: running returns restart at 0",
                returns.numel(),
                self.returns.numel(),
            )
            returns = torch.zeros_like(self.returns)
        self.returns = returns.clone()
