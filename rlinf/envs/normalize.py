"""Running observation normalisation and reward scaling (as SB3's VecNormalize does).

Statistics are kept in float64 on the CPU, as numpy arrays: these run once per env step on a
handful of rows, where a numpy call costs a fraction of a torch op. ``mean``/``var`` read as
float64 tensors (sharing memory) and each class has ``state_dict()`` / ``load_state_dict()``
made of plain tensors and floats so that a checkpoint can save them, and an ``update``
switch: evaluation normalises with frozen statistics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["ObsNormalizer", "RewardScaler", "RunningMeanStd", "combine_moments"]


def combine_moments(
    mean_a: Any, var_a: Any, count_a: float, mean_b: Any, var_b: Any, count_b: float
) -> tuple[Any, Any, float]:
    """Mean, population variance and count of the union of two samples (Chan et al.).

    Shapes: ``mean_*``/``var_*`` are [*shape] (torch tensors or numpy arrays, both of one kind);
    counts are sample counts (either may be 0). Returns new arrays (inputs are not modified).
    """
    total = count_a + count_b
    if total == 0:
        return mean_a * 1.0, var_a * 1.0, 0.0
    delta = mean_b - mean_a
    mean = mean_a + delta * (count_b / total)
    m2 = var_a * count_a + var_b * count_b + (delta * delta) * (count_a * count_b / total)
    return mean, m2 / total, float(total)


def _np64(x: Any) -> np.ndarray:
    """A float64 numpy view/copy of a tensor or array (CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.device.type != "cpu":
            x = x.cpu()
        x = x.numpy()
    return np.asarray(x, dtype=np.float64)


class RunningMeanStd:
    """Running mean and population variance of samples of shape ``shape``.

    Starts from count 0 (mean 0, var 1 until the first update), so after updates it equals the
    mean/var of all the data seen exactly (SB3 starts from a count of 1e-4 instead).
    """

    def __init__(self, shape: Sequence[int] = ()) -> None:
        self.shape = tuple(shape)
        self._mean = np.zeros(self.shape, dtype=np.float64)
        self._var = np.ones(self.shape, dtype=np.float64)
        self.count = 0.0

    @property
    def mean(self) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self._mean))

    @property
    def var(self) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self._var))

    def update(self, x: torch.Tensor | np.ndarray) -> None:
        """Add a batch ``x`` [B, *shape]."""
        x = _np64(x).reshape(-1, *self.shape)
        if x.shape[0] == 0:
            return
        self._add(x.mean(0), x.var(0), x.shape[0])

    def update_from_moments(self, mean: Any, var: Any, count: float) -> None:
        """Add a batch given by its mean, population variance and count (e.g. from other ranks)."""
        self._add(_np64(mean), _np64(var), float(count))

    def _add(self, mean: np.ndarray, var: np.ndarray, count: float) -> None:
        self._mean, self._var, self.count = combine_moments(
            self._mean, self._var, self.count, mean, var, float(count)
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
            out.update_from_moments(part._mean, part._var, part.count)
        return out

    def state_dict(self) -> dict[str, torch.Tensor | float]:
        return {"mean": self.mean.clone(), "var": self.var.clone(), "count": self.count}

    def load_state_dict(self, state: dict[str, torch.Tensor | float]) -> None:
        mean = _np64(state["mean"]).copy()
        if tuple(mean.shape) != self.shape:
            raise ValueError(
                f"normalizer state has shape {tuple(mean.shape)}, expected {self.shape}: "
                "the checkpoint was saved for another observation space"
            )
        self._mean = mean
        self._var = _np64(state["var"]).copy()
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
        mean = self.rms._mean.astype(np.float32)
        std = np.sqrt(self.rms._var + self.epsilon).astype(np.float32)
        if obs.device.type == "cpu":
            x = obs.detach().numpy().astype(np.float32, copy=False)
            out = np.clip((x - mean) / std, -self.clip, self.clip)
            return torch.from_numpy(out)
        mean_t, std_t = torch.from_numpy(mean).to(obs.device), torch.from_numpy(std).to(obs.device)
        return ((obs.float() - mean_t) / std_t).clamp(-self.clip, self.clip)

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
        self._returns = np.zeros(num_envs, dtype=np.float64)
        self.gamma = gamma
        self.clip = clip
        self.epsilon = epsilon
        self.update = update

    @property
    def returns(self) -> torch.Tensor:
        return torch.from_numpy(self._returns)

    def __call__(self, reward: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        """Scale ``reward`` [N] (float32 out, input's device); ``done`` [N] bool ends returns."""
        self._returns = self._returns * self.gamma + _np64(reward)
        if self.update:
            self.rms.update(self._returns)
        scaled = self.scale(reward)
        d = done.detach()
        self._returns[(d.cpu() if d.device.type != "cpu" else d).numpy().astype(bool)] = 0.0
        return scaled

    def scale(self, reward: torch.Tensor) -> torch.Tensor:
        """Scale ``reward`` without touching any state."""
        std = float(np.sqrt(self.rms._var + self.epsilon))
        return (reward.float() / std).clamp(-self.clip, self.clip)

    def state_dict(self) -> dict[str, torch.Tensor | float]:
        return {**self.rms.state_dict(), "returns": self.returns.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor | float]) -> None:
        self.rms.load_state_dict(state)
        returns = _np64(state["returns"]).copy()
        if returns.shape != self._returns.shape:
            # A resume with another env count: the running returns restart, the scale is kept.
            logger.warning(
                "reward scaler state has %d envs, now %d: running returns restart at 0",
                returns.size,
                self._returns.size,
            )
            returns = np.zeros_like(self._returns)
        self._returns = returns
