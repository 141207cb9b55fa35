"""Small actor-critic policies for embodied RL: MLP (state vectors) and CNN (pixels).

Both share one head layout: a policy head (Gaussian mean with a state-independent learnable
log-std for Box spaces, optionally tanh-squashed to the bounds; logits for Discrete spaces)
and a value head. All parameters exist after ``__init__`` (nothing lazy), so FSDP2's
``fully_shard`` can wrap the module. ``forward(obs, action)`` is :meth:`evaluate` (the training
path); :meth:`act` and :meth:`value` are rollout-side methods: under FSDP2 call
``torch.distributed.fsdp.register_fsdp_forward_method(model, "act")`` (and ``"value"``) so that
they gather the shards too.

Action spaces are read by duck typing (``.n`` for Discrete; ``.low``/``.high``/``.shape`` for
Box), so gymnasium is not imported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from rlinf.models.distributions import (
    categorical_entropy,
    categorical_log_prob,
    gaussian_entropy,
    gaussian_log_prob,
    squash_to_bounds,
    squashed_gaussian_log_prob,
)

__all__ = ["ActOutput", "CNNActorCritic", "MLPActorCritic", "build_actor_critic"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


class ActOutput(NamedTuple):
    """What :meth:`act` returns (B = batch).

    action: what training stores and :meth:`evaluate` takes: float32 [B, D] (the pre-tanh
        sample for squashed policies) or int64 [B] (discrete).
    env_action: what the env receives: clipped to the Box bounds, or squashed and rescaled
        to them; int64 [B] for discrete.
    logprob: [B] log-probability of ``action`` (for squashed policies, the log-density of
        ``env_action``; both give the same PPO ratios).
    value: [B] critic estimate.
    """

    action: torch.Tensor
    env_action: torch.Tensor
    logprob: torch.Tensor
    value: torch.Tensor


def layer_init(layer: nn.Module, gain: float) -> nn.Module:
    """Orthogonal weights with ``gain`` and zero bias (the PPO-implementation-details init)."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def run_layers(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``seq(x)`` without the per-module call machinery when no hook is registered on it.

    Small policies run thousands of tiny forwards per update, where module dispatch costs as
    much as the arithmetic. A hooked container (e.g. wrapped by ``fully_shard``) is called
    normally so that its hooks run.
    """
    if seq._forward_pre_hooks or seq._forward_hooks:
        return seq(x)
    for layer in seq:
        x = layer.forward(x) if not (layer._forward_pre_hooks or layer._forward_hooks) else layer(x)
    return x


def mlp(in_dim: int, hidden_sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Linear+activation layers with orthogonal init (gain sqrt(2)); empty sizes -> identity."""
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"actor.model.activation {activation!r}: use one of {sorted(_ACTIVATIONS)}"
        )
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [layer_init(nn.Linear(in_dim, size), math.sqrt(2.0)), _ACTIVATIONS[activation]()]
        in_dim = size
    return nn.Sequential(*layers)


class _ActorCritic(nn.Module):
    """Heads, distributions and the act/evaluate/value API; subclasses provide features."""

    def __init__(
        self,
        actor_dim: int,
        critic_dim: int,
        action_space: Any,
        log_std_init: float,
        squash: bool,
    ) -> None:
        super().__init__()
        if hasattr(action_space, "n") and not hasattr(action_space, "low"):
            self.discrete = True
            self.squash = False
            self.action_dim = int(action_space.n)
        elif hasattr(action_space, "low") and hasattr(action_space, "high"):
            if len(action_space.shape) != 1:
                raise ValueError(f"Box action space must be 1-D, got shape {action_space.shape}")
            self.discrete = False
            self.squash = squash
            self.action_dim = int(action_space.shape[0])
            low = torch.as_tensor(np.asarray(action_space.low, dtype=np.float32))
            high = torch.as_tensor(np.asarray(action_space.high, dtype=np.float32))
            if squash and not (torch.isfinite(low).all() and torch.isfinite(high).all()):
                raise ValueError(
                    "actor.model.squash needs finite action bounds; this Box space is unbounded"
                )
            self.register_buffer("action_low", low, persistent=False)
            self.register_buffer("action_high", high, persistent=False)
            self.log_std = nn.Parameter(torch.full((self.action_dim,), float(log_std_init)))
        else:
            raise ValueError(f"unsupported action space {action_space!r}: use Box or Discrete")
        self.policy_head = layer_init(nn.Linear(actor_dim, self.action_dim), 0.01)
        self.value_head = layer_init(nn.Linear(critic_dim, 1), 1.0)

    # Subclasses: features of the actor and of the critic (one pass when the trunk is shared).
    def features(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def critic_features(self, obs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, obs: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.evaluate(obs, action)

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> ActOutput:
        """Sample (or take the mode of) the policy for ``obs`` [B, ...]; no gradients.

        Runs as is under ``torch.inference_mode()`` (the rollout's hot loop: cheapest) or
        ``no_grad``; otherwise enters ``no_grad`` itself.
        """
        if torch.is_grad_enabled():
            with torch.no_grad():
                return self._act(obs, deterministic)
        return self._act(obs, deterministic)

    def _act(self, obs: torch.Tensor, deterministic: bool) -> ActOutput:
        actor_feat, critic_feat = self.features(obs)
        out = self.policy_head.forward(actor_feat)
        value = self._value(critic_feat)
        if self.discrete:
            log_p = torch.log_softmax(out, -1)
            if deterministic:
                action = out.argmax(-1)
            else:
                action = torch.multinomial(log_p.exp(), 1).squeeze(-1)
            return ActOutput(action, action, log_p.gather(-1, action.unsqueeze(-1))[:, 0], value)
        action = out if deterministic else out + torch.exp(self.log_std) * torch.randn_like(out)
        if self.squash:
            env_action = squash_to_bounds(action, self.action_low, self.action_high)
            logprob = squashed_gaussian_log_prob(
                out, self.log_std, action, self.action_low, self.action_high
            )
        else:
            env_action = torch.clamp(action, self.action_low, self.action_high)
            logprob = gaussian_log_prob(out, self.log_std, action)
        return ActOutput(action, env_action, logprob, value)

    def evaluate(
        self, obs: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logprob [B], entropy [B], value [B]) of stored ``action`` for the PPO update.

        The entropy is analytic: for squashed policies it is the entropy of the base
        (pre-tanh) Gaussian, which has no closed form after the squash.
        """
        actor_feat, critic_feat = self.features(obs)
        out = self.policy_head.forward(actor_feat)
        value = self._value(critic_feat)
        if self.discrete:
            return categorical_log_prob(out, action), categorical_entropy(out), value
        if self.squash:
            logprob = squashed_gaussian_log_prob(
                out, self.log_std, action, self.action_low, self.action_high
            )
        else:
            logprob = gaussian_log_prob(out, self.log_std, action)
        return logprob, gaussian_entropy(self.log_std, out.shape[0]), value

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """[B] critic estimate (only the critic's trunk runs when trunks are separate)."""
        return self._value(self.critic_features(obs))

    def _value(self, critic_feat: torch.Tensor) -> torch.Tensor:
        # [B] straight from a matrix-vector product: a fresh tensor (FSDP2 warns about view
        # outputs) in one kernel.
        head = self.value_head
        return torch.addmv(head.bias, critic_feat, head.weight[0])


class MLPActorCritic(_ActorCritic):
    """MLP policy for flat observations [B, obs_dim] (any [B, ...] is flattened).

    Args:
        obs_dim: flattened observation size.
        action_space: Box (Gaussian) or Discrete (Categorical).
        hidden_sizes: widths of the hidden layers of each trunk.
        activation: "tanh" (default), "relu", "elu", "gelu" or "silu".
        shared_trunk: one trunk for actor and critic, else one each.
        log_std_init: initial value of the learnable log-std (Box only).
        squash: tanh-squash Gaussian samples into the Box bounds.
    """

    def __init__(
        self,
        obs_dim: int,
        action_space: Any,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        shared_trunk: bool = False,
        log_std_init: float = 0.0,
        squash: bool = False,
    ) -> None:
        feat_dim = hidden_sizes[-1] if hidden_sizes else obs_dim
        super().__init__(feat_dim, feat_dim, action_space, log_std_init, squash)
        self.obs_dim = obs_dim
        self.shared_trunk = shared_trunk
        self.actor_trunk = mlp(obs_dim, hidden_sizes, activation)
        self.critic_trunk = None if shared_trunk else mlp(obs_dim, hidden_sizes, activation)

    def _flat(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.reshape(obs.shape[0], -1) if obs.dim() != 2 else obs
        dtype = self.policy_head.weight.dtype
        return x if x.dtype == dtype else x.to(dtype)

    def features(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._flat(obs)
        actor = run_layers(self.actor_trunk, x)
        return actor, (actor if self.critic_trunk is None else run_layers(self.critic_trunk, x))

    def critic_features(self, obs: torch.Tensor) -> torch.Tensor:
        trunk = self.actor_trunk if self.critic_trunk is None else self.critic_trunk
        return run_layers(trunk, self._flat(obs))


def _conv_out(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1


class NatureCNN(nn.Module):
    """The DQN Nature CNN: 3 convs + a linear layer, ReLU; uint8 pixels are scaled by 1/255."""

    _LAYERS = ((32, 8, 4), (64, 4, 2), (64, 3, 1))

    def __init__(self, obs_shape: Sequence[int], channels_last: bool, feature_dim: int) -> None:
        super().__init__()
        if len(obs_shape) != 3:
            raise ValueError(f"CNN observations must be [H, W, C] or [C, H, W], got {obs_shape}")
        self.channels_last = channels_last
        c, h, w = (obs_shape[2], *obs_shape[:2]) if channels_last else tuple(obs_shape)
        layers: list[nn.Module] = []
        for out_c, k, s in self._LAYERS:
            layers += [layer_init(nn.Conv2d(c, out_c, k, s), math.sqrt(2.0)), nn.ReLU()]
            c, h, w = out_c, _conv_out(h, k, s), _conv_out(w, k, s)
        if h < 1 or w < 1:
            raise ValueError(
                f"observation {tuple(obs_shape)} is too small for the Nature CNN (>=36)"
            )
        self.convs = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Sequential(
            layer_init(nn.Linear(c * h * w, feature_dim), math.sqrt(2.0)), nn.ReLU()
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.permute(0, 3, 1, 2) if self.channels_last else obs
        x = x.to(self.fc[0].weight.dtype)
        if obs.dtype == torch.uint8:
            x = x / 255.0
        return self.fc(self.convs(x))


class CNNActorCritic(_ActorCritic):
    """Pixel policy: NatureCNN trunk over [B, H, W, C] (or [B, C, H, W]) images.

    uint8 images are divided by 255; floating images are taken as already in [0, 1].
    Args are those of :class:`MLPActorCritic` with ``obs_shape`` (one observation's shape),
    ``channels_last`` and ``feature_dim`` (trunk output width) in place of the MLP sizes.
    """

    def __init__(
        self,
        obs_shape: Sequence[int],
        action_space: Any,
        channels_last: bool = True,
        feature_dim: int = 512,
        shared_trunk: bool = True,
        log_std_init: float = 0.0,
        squash: bool = False,
    ) -> None:
        super().__init__(feature_dim, feature_dim, action_space, log_std_init, squash)
        self.obs_shape = tuple(obs_shape)
        self.actor_trunk = NatureCNN(obs_shape, channels_last, feature_dim)
        self.critic_trunk = (
            None if shared_trunk else NatureCNN(obs_shape, channels_last, feature_dim)
        )

    def features(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        actor = self.actor_trunk(obs)
        return actor, (actor if self.critic_trunk is None else self.critic_trunk(obs))

    def critic_features(self, obs: torch.Tensor) -> torch.Tensor:
        trunk = self.actor_trunk if self.critic_trunk is None else self.critic_trunk
        return trunk(obs)


def build_actor_critic(
    model_type: str, observation_space: Any, action_space: Any, **kwargs: Any
) -> MLPActorCritic | CNNActorCritic:
    """Build an "mlp" or "cnn" actor-critic for gymnasium-style spaces; ``kwargs`` go to the
    class (e.g. hidden_sizes, activation, shared_trunk, log_std_init, squash)."""
    shape = tuple(getattr(observation_space, "shape", None) or ())
    if model_type == "mlp":
        obs_dim = int(np.prod(shape)) if shape else 1
        return MLPActorCritic(obs_dim, action_space, **kwargs)
    if model_type == "cnn":
        return CNNActorCritic(shape, action_space, **kwargs)
    raise ValueError(f"actor.model.model_type {model_type!r}: use 'mlp' or 'cnn'")
