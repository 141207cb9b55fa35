"""MuJoCo HalfCheetah PPO: the config's pieces and a short run under torchrun.

Also the embodied paths HalfCheetah leans on: GAE bootstrapping of truncated episodes
(every HalfCheetah episode ends by truncation), evaluation envs that restart from the same
states every evaluation, per-step channel messages that repeat one layout, and the SB3
benchmark reading its hyperparameters from the config.
"""

import importlib.util
from pathlib import Path

import gymnasium as gym
import pytest
import torch
import torch.distributed as dist
from distributed import run_distributed
from launchers import REPO, read_metrics, torchrun

from rlinf.algorithms import gae
from rlinf.config import load_config
from rlinf.config.algorithm import AlgorithmConfig
from rlinf.dist.batch import TensorBatch
from rlinf.dist.channel import Channel
from rlinf.envs.worker import EnvWorker
from rlinf.models.actor_critic import build_actor_critic
from rlinf.rollout.embodied import EmbodiedRollout


def test_config_is_ppo_on_halfcheetah_with_normalisation():
    cfg = load_config("halfcheetah_ppo.yaml", detected_accelerators=0)
    assert cfg.env.train.init_params["id"] == "HalfCheetah-v5"
    assert cfg.env.train.normalize_obs and cfg.env.train.normalize_reward
    assert cfg.env.eval.max_episode_steps == 1000 and not cfg.env.eval.auto_reset
    assert cfg.runner.early_stop.metric == "eval/return_mean"
    assert cfg.runner.early_stop.threshold == 1500
    samples = cfg.env.train.total_num_envs * cfg.env.train.max_steps_per_rollout_epoch
    assert samples == 2048 and samples // cfg.actor.global_batch_size == 32


def test_gae_bootstraps_truncated_episodes_from_the_true_final_observation():
    torch.manual_seed(0)
    env = gym.make("HalfCheetah-v5")
    policy = build_actor_critic("mlp", env.observation_space, env.action_space)
    env.close()
    algo = AlgorithmConfig(gamma=0.9, gae_lambda=0.8)
    ro = EmbodiedRollout(policy, torch.device("cpu"), algo)
    T, N = 5, 3
    obs = torch.randn(T + 1, N, 17)  # what the policy acts on (after auto-resets)
    final = torch.randn(T, N, 17)  # true last observations where an episode ended
    done = torch.zeros(T, N, dtype=torch.bool)
    done[1, 0] = done[3, 2] = done[4, 1] = True  # truncations (HalfCheetah never terminates)
    reward = torch.randn(T, N)
    ro.begin(1)
    for t in range(T):
        out = ro.act(obs[t])
        ro.record_action(0, obs[t], out)
        ro.record_outcome(
            0,
            TensorBatch(
                {
                    "obs": obs[t + 1],
                    "reward": reward[t],
                    "terminated": torch.zeros(N, dtype=torch.bool),
                    "done": done[t],
                    "final_obs": torch.where(done[t, :, None], final[t], obs[t + 1]),
                }
            ),
        )
    ro.record_last_obs(0, obs[T])
    batch = ro.finish()

    with torch.no_grad():  # reference: V of the observation each action led to
        values = torch.stack([policy.value(obs[t]) for t in range(T)])
        next_values = torch.stack(
            [policy.value(torch.where(done[t, :, None], final[t], obs[t + 1])) for t in range(T)]
        )
    adv, ret = gae(reward, values, next_values, torch.zeros_like(done), done, 0.9, 0.8)
    torch.testing.assert_close(batch["advantage"], adv.reshape(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch["return"], ret.reshape(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch["obs"], obs[:T].reshape(T * N, 17))


def test_eval_envs_restart_from_the_same_states_as_fresh_ones():
    cfg = load_config("halfcheetah_ppo.yaml", detected_accelerators=0)
    make = lambda: EnvWorker(cfg.env.train, cfg.env.eval, 0, 1, 1, 0.99)  # noqa: E731
    worker, fresh = make(), make()
    try:
        envs, first = worker.eval_start(1)
        for _ in range(5):
            envs.step(torch.ones(envs.num_envs, 6))
        again_envs, again = worker.eval_start(1)
        assert again_envs is envs  # built once
        _, other = fresh.eval_start(1)
        assert torch.equal(first, again) and torch.equal(first, other)
        assert not torch.equal(first[0], first[1])  # distinct envs, distinct seeds
    finally:
        worker.close()
        fresh.close()


def _step_like_messages(rank: int, world_size: int) -> dict:
    """env -> rollout traffic: many batches of one layout, a layout change, a second channel
    between the same ranks, and a receiver that builds a new Channel object midway."""
    obs_ch = Channel([0], [1])
    act_ch = obs_ch.reverse()

    def step_msg(t: int, n: int = 4) -> TensorBatch:
        return TensorBatch(
            {
                "obs": torch.arange(n * 17, dtype=torch.float32).reshape(n, 17) + t,
                "reward": torch.full((n,), float(t)),
                "done": torch.arange(n) % 3 == t % 3,
                "half": torch.ones(n, 2, dtype=torch.bfloat16) * t,  # a non-numpy dtype
            },
            meta={"t": t} if t % 4 == 0 else {},
        )

    got = []
    for t in range(12):
        msg = step_msg(t, n=4 if t < 6 else 2)  # the layout changes at t=6
        if rank == 0:
            obs_ch.send(msg)
            reply = act_ch.recv()
            got.append(torch.equal(reply["action"], torch.full((msg.batch_size, 6), -t * 1.0)))
        else:
            ch = obs_ch if t != 11 else Channel([0], [1])  # a fresh object, same peers
            b = ch.recv()
            ok = all(torch.equal(b[k], msg[k]) for k in msg) and b.meta == msg.meta
            got.append(ok and list(b) == list(msg))
            act_ch.send(TensorBatch({"action": torch.full((b.batch_size, 6), -t * 1.0)}))
    dist.barrier()
    return {"all_equal": all(got), "count": len(got)}


def test_repeated_step_layouts_travel_intact():
    results = run_distributed(_step_like_messages, 2, timeout=60)
    assert results == [{"all_equal": True, "count": 12}] * 2


def test_sb3_benchmark_reads_the_same_hyperparameters():
    spec = importlib.util.spec_from_file_location("bench_sb3", REPO / "bench/embodied_vs_sb3.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    s = bench.load_settings("halfcheetah_ppo.yaml")
    cfg = load_config("halfcheetah_ppo.yaml", detected_accelerators=0)
    assert s["env_id"] == "HalfCheetah-v5"
    assert (s["num_envs"], s["horizon"]) == (8, 256)
    assert (s["update_epochs"], s["minibatch_size"], s["minibatches"]) == (10, 64, 32)
    assert s["hidden_sizes"] == cfg.actor.model.hidden_dims
    assert s["lr"] == cfg.actor.optim.lr and s["gamma"] == cfg.algorithm.gamma
    assert s["normalize_obs"] and s["normalize_reward"]
    assert s["eval_episodes"] == cfg.env.eval.total_num_envs
    with pytest.raises(ValueError, match="adv_type"):
        bench.load_settings("cartpole_grpo.yaml")


def test_short_run_logs_evaluates_and_checkpoints_normalisation(tmp_path):
    out = tmp_path / "run"
    p = torchrun(
        1,
        "halfcheetah_ppo.yaml",
        f"runner.output_dir={out}",
        "runner.max_steps=2",
        "runner.val_check_interval=1",
        "runner.save_interval=2",
        "runner.early_stop.metric=null",
        "env.train.max_steps_per_rollout_epoch=16",
        "actor.global_batch_size=32",
        "actor.micro_batch_size=32",
        "env.eval.max_episode_steps=30",
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    rows = read_metrics(out)
    evals = {r["step"]: r for r in rows if "eval/return_mean" in r}
    assert sorted(evals) == [0, 1, 2]
    assert all(r["eval/episode_len_mean"] == 30 for r in evals.values())  # frozen after 30
    assert [r["step"] for r in rows if "train/value_loss" in r] == [1, 2]
    state = torch.load(out / "checkpoints/global_step_2/rank_0.pt", weights_only=False)
    norm = state["env"]["obs_norm"]
    assert norm["count"] == 8 * (1 + 2 * 16)  # the resets and every step, never eval
    assert state["env"]["rew_scale"] is not None
    assert Path(out / "config.yaml").is_file()
