"""MLPEvaluateGrad against model.evaluate + autograd: outputs, gradients, accumulation."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn
from torch.testing import assert_close

from rlinf.models.actor_critic import MLPActorCritic
from rlinf.models.mlp_grad import MLPEvaluateGrad

BOX = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
DISCRETE = gym.spaces.Discrete(4)


def _model(hidden=(16, 8), activation="tanh", shared=False, dtype=torch.float64, seed=0, space=BOX):
    torch.manual_seed(seed)
    m = MLPActorCritic(5, space, hidden, activation, shared_trunk=shared, log_std_init=-0.3)
    with torch.no_grad():  # move off the init (zero biases, heads of gain 0.01)
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m.to(dtype)


def _data(B=11, seed=1, dtype=torch.float64, space=BOX):
    g = torch.Generator().manual_seed(seed)
    obs, act = torch.randn(B, 5, generator=g).to(dtype), torch.randn(B, 3, generator=g).to(dtype)
    if space is DISCRETE:
        act = torch.randint(0, 4, (B,), generator=g)
    c_lp, c_v = torch.randn(B, generator=g), torch.randn(B, generator=g)
    return [obs, act, c_lp.to(dtype), c_v.to(dtype)]


def _autograd_grads(model, obs, act, c_lp, c_v, ent_coef=0.0):
    """Gradients of sum(c_lp * logprob + c_v * value) - ent_coef * entropy.mean()."""
    model.zero_grad(set_to_none=True)
    lp, ent, v = model.evaluate(obs, act)
    ((c_lp * lp).sum() + (c_v * v).sum() - ent_coef * ent.mean()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, lp.detach(), v.detach()


CASES = [
    ((16, 8), "tanh", False, BOX),
    ((16, 8), "relu", False, BOX),
    ((16, 8), "tanh", True, BOX),
    ((7,), "relu", True, BOX),
    ((), "tanh", False, BOX),  # no hidden layer: the heads read the observation
    ((16, 8), "tanh", False, DISCRETE),
    ((7,), "relu", True, DISCRETE),
]


@pytest.mark.parametrize("hidden,activation,shared,space", CASES)
def test_outputs_and_gradients_equal_autograd(hidden, activation, shared, space):
    model = _model(hidden, activation, shared, space=space)
    obs, act, c_lp, c_v = _data(space=space)
    want, lp, v = _autograd_grads(model, obs, act, c_lp, c_v, ent_coef=0.7)

    path = MLPEvaluateGrad(model)
    model.zero_grad(set_to_none=True)
    cache = path.forward(obs, act)
    assert not cache.logprob.requires_grad
    assert_close(cache.logprob, lp, rtol=1e-12, atol=1e-12)
    assert_close(cache.value, v, rtol=1e-12, atol=1e-12)
    _, ent, _ = model.evaluate(obs, act)
    assert_close(path.entropy_mean(cache), ent.mean().detach(), rtol=1e-12, atol=1e-12)
    path.backward(cache, c_lp, c_v, d_entropy=-0.7 / len(obs))
    for name, p in model.named_parameters():
        assert_close(p.grad, want[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("space", [BOX, DISCRETE])
def test_float32_matches_autograd_closely(space):
    model = _model((64, 64), dtype=torch.float32, space=space)
    obs, act, c_lp, c_v = _data(B=64, dtype=torch.float32, space=space)
    want, _, _ = _autograd_grads(model, obs, act, c_lp, c_v)
    path = MLPEvaluateGrad(model)
    path.backward(path.forward(obs, act), c_lp, c_v)
    for name, p in model.named_parameters():
        assert_close(p.grad, want[name], rtol=1e-4, atol=1e-5, msg=name)


def test_accumulate_adds_and_default_overwrites():
    model = _model()
    path = MLPEvaluateGrad(model)
    a, b = _data(seed=2), _data(seed=3)
    want_a, _, _ = _autograd_grads(model, *a)
    want_b, _, _ = _autograd_grads(model, *b)
    for p in model.parameters():
        p.grad = torch.full_like(p, 123.0)  # stale gradients: overwritten, not added to
    path.backward(path.forward(*a[:2]), *a[2:])
    path.backward(path.forward(*b[:2]), *b[2:], accumulate=True)
    for name, p in model.named_parameters():
        assert_close(p.grad, want_a[name] + want_b[name], rtol=1e-10, atol=1e-12, msg=name)


def test_flat_grads_are_views_that_keep_existing_values():
    model = _model()
    path = MLPEvaluateGrad(model)
    obs, act, c_lp, c_v = _data()
    want, _, _ = _autograd_grads(model, obs, act, c_lp, c_v)  # leaves autograd's .grad
    flat = path.attach_flat_grads()
    assert flat.numel() == sum(p.numel() for p in model.parameters())
    assert_close(flat, torch.cat([want[n].reshape(-1) for n, _ in model.named_parameters()]))
    path.backward(path.forward(obs, act), 2 * c_lp, 2 * c_v)  # written through the views
    for name, p in model.named_parameters():
        assert p.grad.data_ptr() >= flat.data_ptr()
        assert_close(p.grad, 2 * want[name], rtol=1e-10, atol=1e-12, msg=name)
    assert_close(torch.linalg.vector_norm(flat), 2 * torch.linalg.vector_norm(flat / 2))
    flat.mul_(0.5)  # scaling the buffer scales every gradient
    for name, p in model.named_parameters():
        assert_close(p.grad, want[name], rtol=1e-10, atol=1e-12, msg=name)
    assert path.attach_flat_grads() is flat


def test_unsupported_models_say_why():
    assert MLPEvaluateGrad.unsupported(_model()) is None
    assert MLPEvaluateGrad.unsupported(MLPActorCritic(5, DISCRETE)) is None
    squash = MLPActorCritic(5, BOX, squash=True)
    assert "Gaussian" in MLPEvaluateGrad.unsupported(squash)
    gelu = MLPActorCritic(5, BOX, activation="gelu")
    assert "Tanh or ReLU" in MLPEvaluateGrad.unsupported(gelu)
    hooked = _model()
    hooked.actor_trunk[0].register_forward_hook(lambda *a: None)
    assert "hooks" in MLPEvaluateGrad.unsupported(hooked)
    assert "MLPActorCritic" in MLPEvaluateGrad.unsupported(nn.Linear(2, 2))
    frozen = _model()
    frozen.log_std.requires_grad_(False)
    assert "require grad" in MLPEvaluateGrad.unsupported(frozen)
    with pytest.raises(ValueError, match="MLPEvaluateGrad: .*tanh squash"):
        MLPEvaluateGrad(squash)
