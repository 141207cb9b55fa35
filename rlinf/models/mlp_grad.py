"""``MLPActorCritic.evaluate`` with its backward pass written out.

A small policy's PPO update is thousands of optimizer steps on minibatches of a few dozen
rows, where autograd's bookkeeping (graph nodes, saved tensors, the engine, gradient
accumulation) costs more than the matrix products: about 0.6 ms of a 1.1 ms step for a 64x64
actor-critic on one CPU core. :class:`MLPEvaluateGrad` runs the same forward without autograd,
keeps what the backward needs, and given d loss / d logprob, d loss / d value and d loss /
d entropy writes every parameter's gradient into its ``.grad`` (accumulating on request), with
the kernels autograd would run (``addmm``, ``mm``, ``tanh_backward``, ...) and nothing else.

It covers what the hot path needs: a :class:`~rlinf.models.actor_critic.MLPActorCritic` with a
Gaussian (Box, no tanh squash) or categorical (Discrete) policy, Linear layers with tanh or
ReLU activations, shared or separate trunks, no module hooks (so not sharded by FSDP). :meth:`MLPEvaluateGrad.unsupported`
says why another model is not covered; ``model.evaluate`` plus autograd stays the definition,
and the tests compare values and gradients with it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from rlinf.models.actor_critic import MLPActorCritic

__all__ = ["EvalCache", "MLPEvaluateGrad"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_ACT_BACKWARD = {  # activation module -> (forward in place, backward given the output)
    nn.Tanh: (Tensor.tanh_, torch.ops.aten.tanh_backward.default),
    nn.ReLU: (Tensor.relu_, lambda g, out: torch.ops.aten.threshold_backward.default(g, out, 0)),
}


class EvalCache(NamedTuple):
    """What :meth:`MLPEvaluateGrad.forward` returns: the outputs and what the backward needs.

    logprob: [B] log-probability (density) of the actions; value: [B] critic estimate;
    actor_acts / critic_acts: the input and every hidden layer's output of each trunk
    (critic_acts is None for a shared trunk); dist: the policy head's state, Gaussian:
    ``(z, z^2, 1 / std)`` with z [B, D] the standardised actions ``(action - mean) / std``;
    categorical: ``(p, log_p, action)`` with p [B, K] the action probabilities.
    """

    logprob: Tensor
    value: Tensor
    actor_acts: list[Tensor]
    critic_acts: list[Tensor] | None
    dist: tuple[Tensor, Tensor, Tensor]


def _layers(trunk: nn.Sequential) -> list[tuple[nn.Linear, type[nn.Module]]] | None:
    """(Linear, activation type) pairs of an ``mlp()`` trunk, or None if it is not one."""
    mods = list(trunk)
    if len(mods) % 2 or any(m._forward_hooks or m._forward_pre_hooks for m in [trunk, *mods]):
        return None
    pairs = list(zip(mods[::2], mods[1::2], strict=True))
    if any(type(lin) is not nn.Linear or type(act) not in _ACT_BACKWARD for lin, act in pairs):
        return None
    return [(lin, type(act)) for lin, act in pairs]


class MLPEvaluateGrad:
    """Forward of ``model.evaluate`` and the gradients of a loss of its log-prob and value."""

    def __init__(self, model: MLPActorCritic) -> None:
        reason = self.unsupported(model)
        if reason:
            raise ValueError(f"MLPEvaluateGrad: {reason}")
        self.model = model
        self.actor = _layers(model.actor_trunk)
        self.critic = None if model.critic_trunk is None else _layers(model.critic_trunk)
        self._params = list(model.parameters())
        self._flat: Tensor | None = None
        self._views: list[Tensor] = []

    @staticmethod
    def unsupported(model: nn.Module) -> str | None:
        """Why ``model`` is not covered, or None when it is."""
        if not isinstance(model, MLPActorCritic):
            return f"not an MLPActorCritic ({type(model).__name__})"
        if type(model).evaluate is not MLPActorCritic.evaluate:
            return "evaluate() is overridden"
        if model.squash:
            return "only Gaussian policies without tanh squash, or categorical ones"
        hooked = [m for m in model.modules() if m._forward_hooks or m._forward_pre_hooks]
        if hooked or model._forward_pre_hooks:
            return "modules have hooks (e.g. FSDP): autograd must run them"
        trunks = [model.actor_trunk] + ([model.critic_trunk] if model.critic_trunk else [])
        if any(_layers(t) is None for t in trunks):
            return "trunks must be Linear layers each followed by Tanh or ReLU"
        params = list(model.parameters())
        if any(p.dtype != params[0].dtype or p.device != params[0].device for p in params):
            return "parameters must share one dtype and device"
        if not all(p.requires_grad for p in params):
            return "every parameter must require grad"
        return None

    def attach_flat_grads(self) -> Tensor:
        """Make every parameter's ``.grad`` a view of one flat buffer, and return the buffer.

        Gradient clipping then takes one norm and one scaling of it. The views stay in place
        while nothing else assigns ``.grad`` (``zero_grad(set_to_none=True)`` does): call this
        again after such code ran.
        """
        p0 = self._params[0]
        if self._flat is None or self._flat.device != p0.device or self._flat.dtype != p0.dtype:
            self._flat = torch.zeros(sum(p.numel() for p in self._params), dtype=p0.dtype)
            self._flat = self._flat.to(p0.device)
            self._views = list(self._flat.split([p.numel() for p in self._params]))
            self._views = [v.view(p.shape) for v, p in zip(self._views, self._params, strict=True)]
        for p, v in zip(self._params, self._views, strict=True):
            if p.grad is not v:
                if p.grad is not None:
                    v.copy_(p.grad)
                p.grad = v
        return self._flat

    # -- forward ------------------------------------------------------------------------
    def forward(self, obs: Tensor, action: Tensor) -> EvalCache:
        """``model.evaluate(obs, action)``'s log-prob and value (no autograd graph).

        The entropy is left out (see :meth:`entropy_mean`): the PPO step only logs it.
        """
        m = self.model
        with torch.no_grad():
            x = m._flat(obs)
            actor_acts = self._trunk(self.actor, x)
            out = torch.addmm(m.policy_head.bias, actor_acts[-1], m.policy_head.weight.t())
            if self.critic is None:
                critic_acts, feat = None, actor_acts[-1]
            else:
                critic_acts = self._trunk(self.critic, x)
                feat = critic_acts[-1]
            value = torch.addmv(m.value_head.bias, feat, m.value_head.weight[0])
            if m.discrete:
                log_p = torch.log_softmax(out, -1)
                action = action.long().unsqueeze(-1)
                logprob = log_p.gather(-1, action).squeeze(-1)
                dist = (log_p.exp(), log_p, action)
            else:
                log_std = m.log_std
                inv_std = torch.exp(-log_std)
                z = (action - out).mul_(inv_std)
                z_sq = z * z
                logprob = z_sq.sum(-1).mul_(-0.5).sub_(log_std.sum() + _HALF_LOG_2PI * z.shape[-1])
                dist = (z, z_sq, inv_std)
        return EvalCache(logprob, value, actor_acts, critic_acts, dist)

    @staticmethod
    def _trunk(layers, x: Tensor) -> list[Tensor]:
        acts = [x]
        for lin, act in layers:
            x = _ACT_BACKWARD[act][0](torch.addmm(lin.bias, x, lin.weight.t()))
            acts.append(x)
        return acts

    def entropy_mean(self, cache: EvalCache) -> Tensor:
        """0-d mean over the rows of ``cache`` of ``evaluate``'s entropy (no graph)."""
        if self.model.discrete:
            return torch.special.entr(cache.dist[0]).sum(-1).mean()
        log_std = self.model.log_std.detach()  # a Gaussian's: the same for every row
        return log_std.sum() + (0.5 + _HALF_LOG_2PI) * log_std.numel()

    # -- backward -----------------------------------------------------------------------
    def backward(
        self,
        cache: EvalCache,
        d_logprob: Tensor,
        d_value: Tensor,
        d_entropy: float = 0.0,
        accumulate: bool = False,
    ) -> None:
        """Write the parameters' gradients of a loss into their ``.grad``.

        ``d_logprob``/``d_value`` [B] are d loss / d logprob and d loss / d value of the rows
        of ``cache``; ``d_entropy`` is d loss / d entropy, the same for every row (e.g.
        ``-coef / B`` for a bonus ``coef * entropy.mean()``). ``accumulate`` adds to existing
        gradients (micro-batches) instead of overwriting them; a missing ``.grad`` is
        allocated.
        """
        m = self.model
        with torch.no_grad():
            put = _Writer(accumulate)
            if m.discrete:
                d_out = self._categorical_backward(cache, d_logprob, d_entropy)
            else:
                # Gaussian log-density: d/dmean = z / std, d/dlog_std = z^2 - 1 (per row);
                # the entropy, sum(log_std) + const per row: d/dlog_std = 1 per row.
                z, z_sq, inv_std = cache.dist
                shift = d_entropy * z.shape[0] - d_logprob.sum()
                put.mv(m.log_std, z_sq.t(), d_logprob, shift=shift)
                d_out = (z * inv_std).mul_(d_logprob.unsqueeze(1))
            head = m.policy_head
            put.linear(head, d_out, cache.actor_acts[-1])
            d_feat = d_out.mm(head.weight)
            vw = m.value_head.weight
            feat = cache.actor_acts[-1] if self.critic is None else cache.critic_acts[-1]
            put.mv(vw, feat.t(), d_value)
            put.sum(m.value_head.bias, d_value.unsqueeze(1))
            if self.critic is None:  # one trunk feeds both heads
                d_feat = torch.addr(d_feat, d_value, vw[0])
            else:
                self._trunk_backward(
                    put, self.critic, cache.critic_acts, torch.outer(d_value, vw[0])
                )
            self._trunk_backward(put, self.actor, cache.actor_acts, d_feat)

    @staticmethod
    def _categorical_backward(cache: EvalCache, d_logprob: Tensor, d_entropy: float) -> Tensor:
        """d loss / d logits [B, K]: log p_a has gradient onehot(a) - p; the entropy
        H = -sum p log p has gradient -p (log p + H)."""
        p, log_p, action = cache.dist
        d_logits = p * d_logprob.unsqueeze(1).neg()
        d_logits.scatter_add_(1, action, d_logprob.unsqueeze(1))
        if d_entropy:
            h = torch.special.entr(p).sum(-1, keepdim=True)
            d_logits.addcmul_(p, log_p + h, value=-d_entropy)
        return d_logits

    @staticmethod
    def _trunk_backward(put: _Writer, layers, acts: list[Tensor], d_out: Tensor) -> None:
        for i in range(len(layers) - 1, -1, -1):
            lin, act = layers[i]
            d_pre = _ACT_BACKWARD[act][1](d_out, acts[i + 1])
            put.linear(lin, d_pre, acts[i])
            if i:
                d_out = d_pre.mm(lin.weight)


class _Writer:
    """Writes (or adds) computed gradients into parameters' ``.grad`` with out= kernels."""

    def __init__(self, accumulate: bool) -> None:
        self.accumulate = accumulate

    def _grad(self, p: Tensor) -> tuple[Tensor, bool]:
        g = p.grad
        if g is None:
            g = p.grad = torch.empty_like(p)
            return g, False
        return g, self.accumulate

    def linear(self, lin: nn.Linear, d_out: Tensor, inp: Tensor) -> None:
        """Gradients of ``lin`` given d loss / d output [B, out] and its input [B, in]."""
        g, acc = self._grad(lin.weight)
        if acc:
            g.addmm_(d_out.t(), inp)
        else:
            torch.mm(d_out.t(), inp, out=g)
        self.sum(lin.bias, d_out)

    def sum(self, p: Tensor, d_out: Tensor) -> None:
        g, acc = self._grad(p)
        if acc:
            g.add_(d_out.sum(0))
        else:
            torch.sum(d_out, 0, out=g)

    def mv(self, p: Tensor, mat: Tensor, vec: Tensor, shift: Tensor | float = 0.0) -> None:
        """``p.grad (+)= mat @ vec + shift``, for a [D] or [1, D] parameter."""
        g, acc = self._grad(p)
        flat = g.view(-1)
        if acc:
            flat.addmv_(mat, vec)
        else:
            torch.mv(mat, vec, out=flat)
        if not isinstance(shift, float) or shift:
            flat.add_(shift)
