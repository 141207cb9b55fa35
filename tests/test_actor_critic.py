"""MLP/CNN actor-critics: shapes, log-probs against torch.distributions, init, FSDP2."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from distributed import run_distributed
from torch import distributions as D

from rlinf.models.actor_critic import (
    CNNActorCritic,
    MLPActorCritic,
    build_actor_critic,
)
from rlinf.models.distributions import (
    categorical_entropy,
    categorical_log_prob,
    gaussian_entropy,
    gaussian_log_prob,
    squash_to_bounds,
    squashed_gaussian_log_prob,
    tanh_log_abs_det_jacobian,
)

BOX = gym.spaces.Box(
    np.array([-1.0, -2.0, 0.0], np.float32), np.array([1.0, 3.0, 0.5], np.float32), dtype=np.float32
)
DISCRETE = gym.spaces.Discrete(5)
CASES = {
    "box": (BOX, {}),
    "box_squash": (BOX, {"squash": True}),
    "discrete": (DISCRETE, {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_act_shapes_dtypes_bounds(case):
    space, kwargs = CASES[case]
    torch.manual_seed(0)
    model = MLPActorCritic(7, space, log_std_init=0.5, **kwargs)
    obs = torch.randn(64, 7)
    out = model.act(obs)
    for t in (out.logprob, out.value):
        assert t.shape == (64,) and t.dtype == torch.float32
    if space is DISCRETE:
        assert out.action.shape == (64,) and out.action.dtype == torch.int64
        assert torch.equal(out.action, out.env_action)
        assert out.action.min() >= 0 and out.action.max() < 5
    else:
        assert out.action.shape == out.env_action.shape == (64, 3)
        low, high = torch.as_tensor(BOX.low), torch.as_tensor(BOX.high)
        assert (out.env_action >= low).all() and (out.env_action <= high).all()
        if kwargs.get("squash"):
            assert torch.allclose(out.env_action, squash_to_bounds(out.action, low, high))
        else:
            # log_std 0.5 makes samples leave the bounds: env_action is the clipped sample.
            assert not torch.equal(out.action, out.env_action)
            assert torch.equal(out.env_action, out.action.clamp(low, high))
    assert not out.logprob.requires_grad


@pytest.mark.parametrize("case", sorted(CASES))
def test_evaluate_of_act_matches_logprob(case):
    space, kwargs = CASES[case]
    torch.manual_seed(1)
    model = MLPActorCritic(7, space, **kwargs)
    obs = torch.randn(32, 7)
    for deterministic in (False, True):
        out = model.act(obs, deterministic=deterministic)
        logprob, entropy, value = model.evaluate(obs, out.action)
        torch.testing.assert_close(logprob, out.logprob)
        torch.testing.assert_close(value, out.value)
        torch.testing.assert_close(model.value(obs), out.value)
        assert entropy.shape == (32,)
    assert torch.equal(model.act(obs, True).action, model.act(obs, True).action)


def test_gaussian_and_categorical_match_torch_distributions():
    torch.manual_seed(2)
    mean, log_std, x = torch.randn(6, 3), torch.randn(3), torch.randn(6, 3)
    ref = D.Independent(D.Normal(mean, log_std.exp()), 1)
    torch.testing.assert_close(gaussian_log_prob(mean, log_std, x), ref.log_prob(x))
    torch.testing.assert_close(gaussian_entropy(log_std, 6), ref.entropy())
    logits, a = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 3, 0])
    cat = D.Categorical(logits=logits)
    torch.testing.assert_close(categorical_log_prob(logits, a), cat.log_prob(a))
    torch.testing.assert_close(categorical_entropy(logits), cat.entropy())
    masked = logits.clone()
    masked[:, 0] = -float("inf")
    assert torch.isfinite(categorical_entropy(masked)).all()


def test_tanh_correction_is_stable_and_exact():
    u = torch.linspace(-6, 6, 101, dtype=torch.float64).unsqueeze(-1)
    exact = torch.log(1 - torch.tanh(u) ** 2).squeeze(-1)
    torch.testing.assert_close(tanh_log_abs_det_jacobian(u), exact)
    far = tanh_log_abs_det_jacobian(torch.tensor([[40.0], [-40.0]]))
    assert torch.isfinite(far).all()
    torch.testing.assert_close(far, torch.full((2,), 2 * math.log(2) - 80.0))


def test_squashed_log_prob_matches_transformed_distribution():
    torch.manual_seed(3)
    low = torch.tensor([-1.0, -2.0, 0.0], dtype=torch.float64)
    high = torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)
    mean, log_std = 0.5 * torch.randn(50, 3, dtype=torch.float64), torch.tensor([-0.5, 0.0, 0.3])
    log_std = log_std.double()
    u = mean + log_std.exp() * torch.randn(50, 3, dtype=torch.float64)
    td = D.TransformedDistribution(
        D.Normal(mean, log_std.exp()),
        [D.TanhTransform(), D.AffineTransform((high + low) / 2, (high - low) / 2)],
    )
    env_action = squash_to_bounds(u, low, high)
    expected = td.log_prob(env_action).sum(-1)  # atanh inversion, no cache
    torch.testing.assert_close(squashed_gaussian_log_prob(mean, log_std, u, low, high), expected)


def test_squashed_density_change_of_variables_and_monte_carlo():
    """1-D: exp(logprob) integrates to 1 over [low, high] and its mean equals sampling's."""
    space = gym.spaces.Box(-2.0, 3.0, (1,), np.float32)
    torch.manual_seed(4)
    model = MLPActorCritic(2, space, hidden_sizes=(), squash=True, log_std_init=-0.3)
    with torch.no_grad():
        model.policy_head.bias.fill_(0.4)
    obs = torch.zeros(1, 2)
    # Density on a grid of env actions a, through u = atanh((a - mid) / half).
    a = torch.linspace(-2.0, 3.0, 200_001, dtype=torch.float64)[1:-1]
    u = torch.atanh((a - 0.5) / 2.5).float().unsqueeze(-1)
    logp, _, _ = model.evaluate(obs.expand(len(u), 2), u)
    density = logp.double().exp()
    total = torch.trapezoid(density, a).item()
    assert total == pytest.approx(1.0, abs=2e-3)
    mean_integral = torch.trapezoid(density * a, a).item()
    samples = model.act(obs.expand(200_000, 2)).env_action.squeeze(-1).double()
    stderr = samples.std().item() / math.sqrt(len(samples))
    assert abs(samples.mean().item() - mean_integral) < 4 * stderr + 1e-3


def test_orthogonal_init_and_log_std():
    model = MLPActorCritic(5, BOX, hidden_sizes=(64, 32), log_std_init=-1.0)
    first = model.actor_trunk[0].weight  # [64, 5]: orthonormal columns times sqrt(2)
    torch.testing.assert_close(first.T @ first, 2.0 * torch.eye(5), atol=1e-5, rtol=0)
    head = model.policy_head.weight  # [3, 32]: orthonormal rows times 0.01
    torch.testing.assert_close(head @ head.T, 1e-4 * torch.eye(3), atol=1e-8, rtol=0)
    assert model.value_head.weight.norm().item() == pytest.approx(1.0, rel=1e-5)
    assert all(
        float(m.bias.detach().abs().max()) == 0 for m in model.modules() if hasattr(m, "bias")
    )
    assert torch.equal(model.log_std.data, torch.full((3,), -1.0))
    assert isinstance(model.actor_trunk[1], torch.nn.Tanh)
    relu = MLPActorCritic(5, BOX, activation="relu")
    assert isinstance(relu.actor_trunk[1], torch.nn.ReLU)
    with pytest.raises(ValueError, match="activation"):
        MLPActorCritic(5, BOX, activation="swish2")


def test_shared_and_separate_trunks():
    obs = torch.randn(8, 4)
    separate = MLPActorCritic(4, DISCRETE, shared_trunk=False)
    separate.value(obs).sum().backward()
    assert all(p.grad is None for p in separate.actor_trunk.parameters())
    assert all(p.grad is not None for p in separate.critic_trunk.parameters())
    shared = MLPActorCritic(4, DISCRETE, shared_trunk=True)
    assert shared.critic_trunk is None
    assert sum(p.numel() for p in shared.parameters()) < sum(
        p.numel() for p in separate.parameters()
    )
    shared.value(obs).sum().backward()
    assert all(p.grad is not None for p in shared.actor_trunk.parameters())


def test_evaluate_gradients_reach_log_std_and_heads():
    model = MLPActorCritic(4, BOX, squash=True)
    obs, action = torch.randn(8, 4), torch.randn(8, 3)
    logprob, entropy, value = model(obs, action)
    (logprob.mean() + entropy.mean() + value.mean()).backward()
    for p in (model.log_std, model.policy_head.weight, model.value_head.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_cnn_channels_last_uint8():
    space = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    torch.manual_seed(5)
    model = build_actor_critic("cnn", space, DISCRETE)
    assert isinstance(model, CNNActorCritic)
    obs = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)
    out = model.act(obs)
    assert out.action.shape == (4,) and out.value.shape == (4,)
    logprob, _, _ = model.evaluate(obs, out.action)
    torch.testing.assert_close(logprob, out.logprob)
    # Channels-first input with the same weights gives the same result; floats are [0, 1].
    chw = CNNActorCritic((3, 64, 64), DISCRETE, channels_last=False)
    chw.load_state_dict(model.state_dict())
    torch.testing.assert_close(chw.value(obs.permute(0, 3, 1, 2)), out.value)
    torch.testing.assert_close(model.value(obs.float() / 255.0), out.value)
    box = CNNActorCritic((64, 64, 3), BOX, shared_trunk=False, squash=True)
    assert box.act(obs).env_action.shape == (4, 3)
    with pytest.raises(ValueError, match="too small"):
        CNNActorCritic((16, 16, 3), DISCRETE)


def test_builder():
    mlp = build_actor_critic("mlp", gym.spaces.Box(-1, 1, (2, 3)), BOX, hidden_sizes=(16,))
    assert mlp.obs_dim == 6 and mlp.act(torch.randn(2, 2, 3)).action.shape == (2, 3)
    scalar = build_actor_critic("mlp", gym.spaces.Discrete(10), DISCRETE)
    assert scalar.act(torch.tensor([1.0, 2.0])).action.shape == (2,)
    with pytest.raises(ValueError, match="model_type"):
        build_actor_critic("transformer", BOX, BOX)
    with pytest.raises(ValueError, match="finite"):
        build_actor_critic("mlp", BOX, gym.spaces.Box(-np.inf, np.inf, (2,)), squash=True)


def _fsdp_rank(rank, world_size):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    torch.manual_seed(0)
    model = MLPActorCritic(4, BOX, hidden_sizes=(16, 16), squash=True)
    reference = MLPActorCritic(4, BOX, hidden_sizes=(16, 16), squash=True)
    reference.load_state_dict(model.state_dict())
    mesh = init_device_mesh("cpu", (world_size,))
    fully_shard(model.actor_trunk, mesh=mesh)
    fully_shard(model, mesh=mesh)
    register_fsdp_forward_method(model, "act")
    register_fsdp_forward_method(model, "value")
    obs, action = torch.randn(6, 4), torch.randn(6, 3)
    for m in (model, reference):
        logprob, entropy, value = m(obs, action)
        (logprob.sum() + entropy.sum() + value.sum()).backward()
    grads_equal = all(
        torch.allclose(p.grad.full_tensor(), q.grad, atol=1e-6)
        for p, q in zip(model.parameters(), reference.parameters(), strict=True)
    )
    act_equal = torch.allclose(
        model.act(obs, deterministic=True).env_action,
        reference.act(obs, deterministic=True).env_action,
    )
    value_equal = torch.allclose(model.value(obs), reference.value(obs))
    return grads_equal, act_equal, value_equal


def test_fsdp2_fully_shard_two_ranks():
    assert run_distributed(_fsdp_rank, 2) == [(True, True, True)] * 2
