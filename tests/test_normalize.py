"""Running statistics against numpy over the concatenated data, reward scaling against a loop."""

import logging

import numpy as np
import pytest
import torch

from rlinf.envs.normalize import ObsNormalizer, RewardScaler, RunningMeanStd


def _batches(seed: int, sizes, shape=(3,)):
    rng = np.random.default_rng(seed)
    return [rng.normal(2.0, 3.0, size=(n, *shape)) * rng.uniform(0.5, 2.0) for n in sizes]


def test_running_mean_std_equals_numpy_over_concatenation():
    batches = _batches(0, [1, 7, 50, 3, 200])
    rms = RunningMeanStd((3,))
    for b in batches:
        rms.update(torch.from_numpy(b).float())
    data = np.concatenate([b.astype(np.float32) for b in batches]).astype(np.float64)
    np.testing.assert_allclose(rms.mean.numpy(), data.mean(0), rtol=1e-12)
    np.testing.assert_allclose(rms.var.numpy(), data.var(0), rtol=1e-10)
    assert rms.count == len(data)
    assert rms.mean.dtype == torch.float64


def test_merge_equals_statistics_of_all_parts():
    parts_data = [_batches(s, [20, 5]) for s in range(3)]
    parts = []
    for batches in parts_data:
        rms = RunningMeanStd((3,))
        for b in batches:
            rms.update(torch.from_numpy(b))
        parts.append(rms)
    parts.append(RunningMeanStd((3,)))  # a rank that saw nothing
    merged = RunningMeanStd.merge(parts)
    data = np.concatenate([b for batches in parts_data for b in batches])
    np.testing.assert_allclose(merged.mean.numpy(), data.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged.var.numpy(), data.var(0), rtol=1e-10)
    assert merged.count == len(data)
    with pytest.raises(ValueError):
        RunningMeanStd.merge([])


def test_obs_normalizer_normalizes_clips_and_freezes():
    norm = ObsNormalizer((3,), clip=2.0)
    seen = []
    for b in _batches(1, [16, 16, 16]):
        x = torch.from_numpy(b).float()
        seen.append(b.astype(np.float32))
        out = norm(x)
        data = np.concatenate(seen).astype(np.float64)
        expected = np.clip((b - data.mean(0)) / np.sqrt(data.var(0) + 1e-8), -2.0, 2.0)
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-5)
        assert out.dtype == torch.float32
    assert out.abs().max() == pytest.approx(2.0)  # some values were clipped
    # Eval: no update.
    norm.update = False
    before = norm.state_dict()
    norm(torch.full((4, 3), 1e6))
    assert torch.equal(norm.rms.mean, before["mean"]) and norm.rms.count == before["count"]
    # A fresh normalizer loaded from the state gives the same outputs.
    fresh = ObsNormalizer((3,), clip=2.0, update=False)
    fresh.load_state_dict(before)
    x = torch.randn(5, 3)
    assert torch.equal(fresh(x), norm(x))
    with pytest.raises(ValueError, match="shape"):
        ObsNormalizer((4,)).load_state_dict(before)


def _reference_reward_scaling(rewards, dones, gamma, clip, eps=1e-8):
    """VecNormalize's reward path written out with numpy over every return seen so far."""
    ret = np.zeros(rewards.shape[1])
    seen, out = [], []
    for r, d in zip(rewards, dones):
        ret = ret * gamma + r
        seen.append(ret.copy())
        var = np.concatenate(seen).var()
        out.append(np.clip(r / np.sqrt(var + eps), -clip, clip))
        ret[d] = 0.0
    return np.stack(out)


def test_reward_scaler_matches_reference_loop():
    rng = np.random.default_rng(2)
    steps, n, gamma = 60, 4, 0.9
    rewards = rng.normal(1.0, 2.0, size=(steps, n))
    dones = rng.random((steps, n)) < 0.1
    scaler = RewardScaler(n, gamma, clip=3.0)
    out = [
        scaler(torch.from_numpy(r).float(), torch.from_numpy(d)).numpy()
        for r, d in zip(rewards, dones)
    ]
    expected = _reference_reward_scaling(rewards.astype(np.float32), dones, gamma, 3.0)
    np.testing.assert_allclose(np.stack(out), expected, rtol=1e-5, atol=1e-6)
    assert dones.any()


def test_reward_scaler_state_and_update_switch(caplog):
    scaler = RewardScaler(2, 0.99)
    for _ in range(5):
        scaler(torch.tensor([1.0, 3.0]), torch.tensor([False, True]))
    state = scaler.state_dict()
    assert state["returns"][1] == 0.0 and state["returns"][0] > 1.0
    scaler.update = False
    scaler(torch.tensor([100.0, 100.0]), torch.tensor([False, False]))
    assert scaler.rms.count == state["count"]
    restored = RewardScaler(2, 0.99)
    restored.load_state_dict(state)
    assert torch.equal(restored.returns, state["returns"])
    r = torch.tensor([0.5, -0.5])
    assert torch.equal(restored.scale(r), scaler.scale(r))
    with caplog.at_level(logging.WARNING):
        RewardScaler(3, 0.99).load_state_dict(state)
    assert "restart" in caplog.text
