"""GymBatchedEnv against single gymnasium envs stepped by hand with the same seeds."""

import importlib.util

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlinf.envs import BatchedEnv, make_env
from rlinf.envs.gym_env import GymBatchedEnv, episode_seed


def _random_discrete(rng: np.random.Generator, n: int) -> torch.Tensor:
    return torch.from_numpy(rng.integers(0, 2, size=n)).long()


def test_shapes_and_dtypes_cartpole():
    env = GymBatchedEnv("CartPole-v1", num_envs=4, seed=0)
    assert isinstance(env, BatchedEnv)
    obs = env.reset()
    assert obs.shape == (4, 4) and obs.dtype == torch.float32
    res = env.step(torch.zeros(4, dtype=torch.long))
    assert res.obs.shape == (4, 4) and res.obs.dtype == torch.float32
    assert res.final_obs.shape == (4, 4) and res.final_obs.dtype == torch.float32
    assert res.reward.shape == (4,) and res.reward.dtype == torch.float32
    assert res.terminated.dtype == torch.bool and res.truncated.dtype == torch.bool
    assert res.episode_return.dtype == torch.float32
    assert res.episode_length.dtype == torch.int64
    assert res.success is None and res.episode_success is None
    assert not res.finished.any()
    assert torch.equal(res.reward, torch.ones(4))
    env.close()


def test_auto_reset_keeps_true_final_obs_and_episode_stats():
    """Every step of every env equals a single env stepped by hand with the derived seeds."""
    n, seed, steps = 3, 7, 150
    env = GymBatchedEnv("CartPole-v1", num_envs=n, seed=seed)
    refs = [gym.make("CartPole-v1") for _ in range(n)]
    ref_obs = [r.reset(seed=episode_seed(seed, i, 0))[0] for i, r in enumerate(refs)]
    episode = [1] * n
    ref_ret, ref_len, ended = [0.0] * n, [0] * n, [0] * n
    obs = env.reset()
    np.testing.assert_array_equal(obs.numpy(), np.stack(ref_obs))
    rng = np.random.default_rng(0)
    for _ in range(steps):
        actions = _random_discrete(rng, n)
        res = env.step(actions)
        for i, ref in enumerate(refs):
            o, r, term, trunc, _ = ref.step(int(actions[i]))
            ref_ret[i] += r
            ref_len[i] += 1
            assert bool(res.terminated[i]) == term and bool(res.truncated[i]) == trunc
            assert float(res.reward[i]) == r
            np.testing.assert_array_equal(res.final_obs[i].numpy(), o)
            if term or trunc:
                assert float(res.episode_return[i]) == ref_ret[i]
                assert int(res.episode_length[i]) == ref_len[i]
                ref_ret[i], ref_len[i] = 0.0, 0
                ended[i] += 1
                o, _ = ref.reset(seed=episode_seed(seed, i, episode[i]))
                episode[i] += 1
                assert not np.array_equal(res.final_obs[i].numpy(), res.obs[i].numpy())
            else:
                assert float(res.episode_return[i]) == 0.0 and int(res.episode_length[i]) == 0
            np.testing.assert_array_equal(res.obs[i].numpy(), o)
    assert min(ended) >= 2, "random CartPole episodes should end several times"
    env.close()


def test_halfcheetah_truncation_final_obs_headless(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo writes its warnings to ./MUJOCO_LOG.TXT
    n, seed, horizon = 2, 3, 10
    env = make_env(
        "mujoco", env_id="HalfCheetah-v5", num_envs=n, seed=seed, max_episode_steps=horizon
    )
    assert env.single_action_space.shape == (6,)
    ref = gym.make("HalfCheetah-v5", max_episode_steps=horizon)
    ref_obs, _ = ref.reset(seed=episode_seed(seed, 1, 0))
    obs = env.reset()
    assert obs.shape == (n, 17) and obs.dtype == torch.float32
    np.testing.assert_allclose(obs[1].numpy(), ref_obs.astype(np.float32))
    actions = torch.linspace(-1, 1, n * 6).reshape(n, 6)
    for t in range(1, horizon + 1):
        res = env.step(actions)
        ref_obs, r, term, trunc, _ = ref.step(actions[1].numpy())
        np.testing.assert_allclose(res.final_obs[1].numpy(), ref_obs.astype(np.float32), rtol=1e-6)
        assert res.reward[1].item() == pytest.approx(r, rel=1e-6)
        assert not res.terminated.any()
        assert bool(res.truncated.all()) == (t == horizon)
    assert torch.equal(res.episode_length, torch.full((n,), horizon))
    first_obs, _ = ref.reset(seed=episode_seed(seed, 1, 1))
    np.testing.assert_allclose(res.obs[1].numpy(), first_obs.astype(np.float32))
    env.close()


def test_group_seeds_shared_inside_group_and_distinct_across():
    env = GymBatchedEnv("CartPole-v1", num_envs=6, seed=11, group_size=3)
    obs = env.reset()
    assert torch.equal(obs[0], obs[1]) and torch.equal(obs[0], obs[2])
    assert torch.equal(obs[3], obs[5])
    assert not torch.equal(obs[0], obs[3])
    # The same actions inside a group keep the group identical through auto-resets.
    rng = np.random.default_rng(1)
    dones = 0
    for _ in range(80):
        res = env.step(_random_discrete(rng, 2).repeat_interleave(3))
        dones += int(res.done.sum())
        for g in range(2):
            block = res.obs[3 * g : 3 * g + 3]
            assert torch.equal(block, block[:1].expand_as(block))
    assert dones > 0
    # Explicit seeds: one per group is expanded, one per env is taken as is.
    obs = env.reset(seeds=[5, 6])
    assert torch.equal(obs[0], obs[2]) and not torch.equal(obs[0], obs[3])
    ref = gym.make("CartPole-v1")
    np.testing.assert_array_equal(obs[4].numpy(), ref.reset(seed=6)[0])
    obs = env.reset(seeds=list(range(6)))
    np.testing.assert_array_equal(obs[4].numpy(), ref.reset(seed=4)[0])
    with pytest.raises(ValueError, match="one per env"):
        env.reset(seeds=[1, 2, 3])
    env.close()


def test_runs_are_reproducible():
    def rollout(seed: int) -> torch.Tensor:
        env = GymBatchedEnv("CartPole-v1", num_envs=4, seed=seed)
        rng = np.random.default_rng(2)
        out = [env.reset()]
        for _ in range(60):
            out.append(env.step(_random_discrete(rng, 4)).obs)
        env.close()
        return torch.stack(out)

    assert torch.equal(rollout(5), rollout(5))
    assert not torch.equal(rollout(5)[0], rollout(6)[0])


@pytest.mark.filterwarnings("ignore:.*already returned terminated = True")
def test_ignore_terminations_only_truncation_ends():
    horizon = 30
    env = GymBatchedEnv(
        "CartPole-v1", num_envs=4, seed=0, max_episode_steps=horizon, ignore_terminations=True
    )
    env.reset()
    rng = np.random.default_rng(3)
    max_angle = 0.0
    for t in range(1, 2 * horizon + 1):
        res = env.step(_random_discrete(rng, 4))
        max_angle = max(max_angle, res.final_obs[:, 2].abs().max().item())
        assert not res.terminated.any()
        assert bool(res.truncated.all()) == (t % horizon == 0)
        if t % horizon == 0:
            assert torch.equal(res.episode_length, torch.full((4,), horizon))
    # The pole fell past CartPole's termination angle, yet no episode ended early.
    assert max_angle > 0.2095
    env.close()


def test_no_auto_reset_envs_stay_done_until_reset():
    n = 4
    env = GymBatchedEnv("CartPole-v1", num_envs=n, seed=1, auto_reset=False)
    env.reset()
    rng = np.random.default_rng(4)
    ends = torch.zeros(n, dtype=torch.long)
    returns = torch.zeros(n)
    last_obs = [None] * n
    for _ in range(120):
        res = env.step(_random_discrete(rng, n))
        for i in range(n):
            if last_obs[i] is not None:  # already finished
                assert res.reward[i] == 0 and bool(res.finished[i]) and not res.done[i]
                assert torch.equal(res.obs[i], last_obs[i])
            else:
                returns[i] += res.reward[i]
        ends += res.done.long()
        for i in torch.nonzero(res.done).flatten().tolist():
            assert torch.equal(res.final_obs[i], res.obs[i])
            assert res.episode_return[i] == returns[i]
            last_obs[i] = res.obs[i].clone()
        assert torch.equal(res.finished, torch.tensor([o is not None for o in last_obs]))
    assert torch.equal(ends, torch.ones(n, dtype=torch.long)), "each env ends exactly once"
    obs = env.reset()
    res = env.step(torch.zeros(n, dtype=torch.long))
    assert not res.finished.any() and torch.equal(res.reward, torch.ones(n))
    assert not torch.equal(obs, torch.stack(last_obs))
    env.close()


class _CounterEnv(gym.Env):
    """Action 1 counts up; success from count 3 on; terminates at count 5."""

    observation_space = gym.spaces.Box(0.0, 10.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.count = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.count += int(action)
        obs = np.full(1, self.count, np.float32)
        return obs, float(action), self.count >= 5, False, {"is_success": self.count >= 3}


gym.register("RlinfTest/Counter-v0", entry_point=_CounterEnv, max_episode_steps=8)


@pytest.mark.parametrize("auto_reset", [True, False])
def test_success_from_info(auto_reset):
    env = GymBatchedEnv("RlinfTest/Counter-v0", num_envs=2, seed=0, auto_reset=auto_reset)
    env.reset()
    actions = torch.tensor([1, 0])
    for t in range(1, 9):
        res = env.step(actions)
        assert res.success is not None and not res.success[1]
        if t <= 5:
            assert bool(res.success[0]) == (t >= 3)
        if t == 5:
            assert res.terminated.tolist() == [True, False]
            assert res.final_obs[0].item() == 5.0 and res.episode_success[0]
            assert res.episode_return[0] == 5.0
        if t == 8:
            assert res.truncated[1] and not res.episode_success[1]
            assert res.episode_length[1] == 8
    env.close()


def test_async_matches_sync():
    envs = [GymBatchedEnv("CartPole-v1", 2, seed=9, vector_mode=m) for m in ("sync", "async")]
    obs = [e.reset() for e in envs]
    assert torch.equal(obs[0], obs[1])
    rng = np.random.default_rng(5)
    for _ in range(50):
        a = _random_discrete(rng, 2)
        r_sync, r_async = (e.step(a) for e in envs)
        for field in ("obs", "final_obs", "reward", "terminated", "truncated", "episode_length"):
            assert torch.equal(getattr(r_sync, field), getattr(r_async, field)), field
    for e in envs:
        e.close()


def test_make_env_dispatch_and_errors():
    env = make_env("gymnasium", env_id="Pendulum-v1", num_envs=2, seed=0)
    assert isinstance(env, GymBatchedEnv)
    env.reset()
    res = env.step(torch.zeros(2, 1))
    assert res.obs.shape == (2, 3)
    env.close()
    with pytest.raises(ValueError, match="unknown"):
        make_env("atari", env_id="x")
    with pytest.raises(ValueError, match="group_size"):
        GymBatchedEnv("CartPole-v1", num_envs=4, seed=0, group_size=3)
    with pytest.raises(RuntimeError, match="reset"):
        GymBatchedEnv("CartPole-v1", num_envs=1, seed=0).step(torch.zeros(1, dtype=torch.long))


@pytest.mark.parametrize("env_type,package", [("maniskill", "mani_skill"), ("libero", "libero")])
def test_make_env_names_the_extra_when_missing(env_type, package):
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed")
    with pytest.raises(ImportError, match=rf"pip install rlinf\[{env_type}\]"):
        make_env(env_type, num_envs=1)
