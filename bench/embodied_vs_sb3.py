"""Embodied PPO, ours against stable-baselines3, side by side in one invocation.

    python bench/embodied_vs_sb3.py --env CartPole-v1 --repeats 3 \
        --out bench/results/embodied_vs_sb3_cartpole.json
    python bench/embodied_vs_sb3.py --env HalfCheetah-v5 --steps 600000 \
        --out bench/results/embodied_vs_sb3_halfcheetah.json

Both sides get the same env, PPO hyperparameters, network and step budget, all read from one
of our configs (``--config``; default ``cartpole_ppo.yaml`` / ``halfcheetah_ppo.yaml``):
number of envs, rollout horizon, update epochs, minibatch size, hidden sizes and activation,
learning rate and its linear decay, gamma, GAE lambda, clip range, loss coefficients, gradient
clipping, Adam eps, and observation / reward normalisation (SB3's ``VecNormalize``). SB3's
value loss is the MSE without our factor 1/2, so it gets ``vf_coef = value_loss_coef / 2`` (the
same objective). Each side runs as its own subprocess, one after the other (alternating over
``--repeats``, with seeds ``--seed + i``), with the same thread count:

- ours: ``python -m rlinf.launch`` (one process) or ``torchrun -m rlinf.launch`` (several) on
  a config derived from the base one (the real product; ``--placement colocated``, the
  default, runs every role in one process, the fastest placement measured on 2 CPU cores;
  ``config`` keeps the base config's placement),
  read back from its ``metrics.jsonl``;
- SB3: ``PPO.learn`` in a worker process of this script, with an eval callback that runs
  the same evaluation at the same points as ours: before training and after every
  ``runner.val_check_interval`` updates, ``env.eval.total_num_envs`` deterministic episodes
  with the training normalisation statistics, raw returns.

Both stop at the target eval return (``--target``; 475 for CartPole-v1, 1500 for
HalfCheetah-v5) or at the step budget. Reported per run and as medians:

- ``env_steps_per_s``: env steps / training wall time (rollouts + updates + everything else
  between the first and the last update, evaluation excluded);
- ``rollout_env_steps_per_s``: env steps / time spent collecting rollouts only;
- ``time_to_target_s``: wall-clock seconds from process launch (start-up included) to the
  evaluation that reached the target (null: not reached within the budget).

Each run also records its process tree's wall and CPU seconds and the host's load average
before and after: on a shared machine, compare runs of one invocation only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = {  # env id -> (our base config, target eval return)
    "CartPole-v1": ("cartpole_ppo.yaml", 475.0),
    "HalfCheetah-v5": ("halfcheetah_ppo.yaml", 1500.0),
}


# -- the shared hyperparameters --------------------------------------------------------------
def load_settings(config: str) -> dict:
    """Everything both sides share, from one of our configs (one source of truth)."""
    sys.path.insert(0, str(REPO))
    from rlinf.config import load_config

    cfg = load_config(config, detected_accelerators=0)
    tr, a, m, o = cfg.env.train, cfg.algorithm, cfg.actor.model, cfg.actor.optim
    if a.adv_type != "gae" or a.loss_type != "actor_critic":
        raise ValueError(f"{config}: the SB3 comparison needs algorithm.adv_type=gae (PPO)")
    if a.clip_ratio_low != a.clip_ratio_high or a.clip_ratio_c is not None:
        raise ValueError(f"{config}: SB3's PPO has one symmetric clip range and no dual clip")
    if m.model_type != "mlp" or m.shared_trunk or m.tanh_squash:
        raise ValueError(f"{config}: use an MLP with separate trunks and no tanh squash")
    if o.lr_scheduler not in ("constant", "linear") or o.warmup_steps or o.min_lr_ratio:
        raise ValueError(f"{config}: only a constant or linear-to-zero learning rate maps to SB3")
    samples = tr.total_num_envs * tr.max_steps_per_rollout_epoch
    ev = cfg.env.eval or tr
    return {
        "config": str(config),
        "env_id": tr.init_params["id"],
        "num_envs": tr.total_num_envs,
        "horizon": tr.max_steps_per_rollout_epoch,
        "update_epochs": a.update_epoch,
        "minibatch_size": cfg.actor.global_batch_size,
        "minibatches": samples // cfg.actor.global_batch_size,
        "hidden_sizes": list(m.hidden_dims),
        "activation": m.activation,
        "log_std_init": m.log_std_init,
        "lr": o.lr,
        "lr_schedule": o.lr_scheduler,
        "adam_eps": o.adam_eps,
        "max_grad_norm": o.clip_grad,
        "gamma": a.gamma,
        "gae_lambda": a.gae_lambda,
        "clip_range": a.clip_ratio_low,
        "value_loss_coef": a.value_loss_coef,
        "entropy_coef": a.entropy_bonus,
        "normalize_advantages": a.normalize_advantages,
        "normalize_obs": tr.normalize_obs,
        "normalize_reward": tr.normalize_reward,
        "eval_interval_updates": cfg.runner.val_check_interval,
        "eval_episodes": ev.total_num_envs,
        "eval_max_steps": ev.max_episode_steps,
    }


# -- ours ----------------------------------------------------------------------------------
def run_ours(s: dict, args, seed: int, workdir: Path) -> dict:
    """Launch our runner under torchrun and read its metrics back."""
    steps_per_update = s["num_envs"] * s["horizon"]
    updates = max(1, args.steps // steps_per_update)
    out = workdir / f"ours_seed{seed}"
    derived = workdir / f"ours_seed{seed}.yaml"
    lines = [f"defaults: [{Path(s['config']).resolve()}]"]
    nproc = None
    if args.placement == "colocated":
        nproc = 1
        lines += [
            "cluster:",
            "  accelerators_per_node: 1",
            "  component_placement:",
            "    actor,rollout,env: all",
        ]
    derived.write_text("\n".join(lines) + "\n")
    overrides = [
        f"runner.output_dir={out}",
        f"runner.max_steps={updates}",
        f"runner.seed={seed}",
        f"env.train.seed={seed}",
        "runner.early_stop.metric=eval/return_mean",
        f"runner.early_stop.threshold={args.target}",
        "runner.save_interval=0",
        "runner.logger.logger_backends=[console,jsonl]",
    ]
    if nproc is None:
        sys.path.insert(0, str(REPO))
        from rlinf.config import load_config

        nproc = load_config(str(derived), overrides, detected_accelerators=0)
        nproc = nproc.cluster.num_nodes * nproc.cluster.accelerators_per_node
    # One process runs as `python -m rlinf.launch` (the product's single-process mode): torchrun
    # would add a launcher process that imports torch too (seconds of start-up).
    launcher = (
        []
        if nproc == 1
        else ["torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m"]
    )
    cmd = [sys.executable, "-m", *launcher, "rlinf.launch", "--config", str(derived), *overrides]
    log = workdir / f"ours_seed{seed}.log"
    t0, proc, host = _timed_run(cmd, log, args)
    if proc.returncode != 0:
        raise RuntimeError(f"our run failed (exit {proc.returncode}); see {log}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["step"] >= 1]
    first = rows[0]  # the step-0 evaluation, or else the first update
    start = first["time"] if first["step"] == 0 else first["time"] - first["time/step_s"]
    eval_s = sum(r.get("time/eval_s", 0.0) for r in train)
    train_wall = train[-1]["time"] - start - eval_s
    env_steps = int(train[-1]["env/total_steps"])
    rollout_s = sum(r["time/rollout_s"] for r in train)
    evals = [
        {"env_steps": r["step"] * steps_per_update, "time_s": r["time"] - t0, "return": ret}
        for r in rows
        if (ret := r.get("eval/return_mean")) is not None
    ]
    return _summary("ours", seed, env_steps, train_wall, rollout_s, host, evals, args.target)


# -- stable-baselines3 -------------------------------------------------------------------------
def run_sb3(s: dict, args, seed: int, workdir: Path) -> dict:
    """Run SB3's PPO in a worker process (start-up timed like ours) and read its record."""
    record = workdir / f"sb3_seed{seed}.json"
    job = {"settings": s, "steps": args.steps, "seed": seed, "target": args.target}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--sb3-worker", json.dumps(job)]
    cmd += ["--out", str(record)]
    log = workdir / f"sb3_seed{seed}.log"
    t0, proc, host = _timed_run(cmd, log, args)
    if proc.returncode != 0:
        raise RuntimeError(f"the SB3 run failed (exit {proc.returncode}); see {log}")
    r = json.loads(record.read_text())
    evals = [{**e, "time_s": e["time"] - t0} for e in r["evals"]]
    for e in evals:
        del e["time"]
    return _summary(
        "sb3", seed, r["env_steps"], r["train_wall_s"], r["rollout_s"], host, evals, args.target
    )


def sb3_worker(job: dict, out: str) -> None:
    """PPO.learn with an eval callback mirroring our evaluation; writes one JSON record."""
    import numpy as np
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    s, seed, target = job["settings"], job["seed"], job["target"]
    venv = make_vec_env(s["env_id"], n_envs=s["num_envs"], seed=seed)
    if s["normalize_obs"] or s["normalize_reward"]:
        venv = VecNormalize(
            venv,
            norm_obs=s["normalize_obs"],
            norm_reward=s["normalize_reward"],
            gamma=s["gamma"],
            clip_obs=10.0,
            clip_reward=10.0,
            epsilon=1e-8,
        )
    n_eval = s["eval_episodes"]
    limit = {"max_episode_steps": s["eval_max_steps"]} if s["eval_max_steps"] else {}
    eval_env = make_vec_env(s["env_id"], n_envs=n_eval, seed=seed + 10_000, env_kwargs=limit)
    max_eval_steps = s["eval_max_steps"] or 10**9

    def evaluate(model) -> float:
        """One deterministic episode per eval env, frozen training statistics, raw rewards."""
        obs = eval_env.reset()
        ret = np.zeros(n_eval)
        alive = np.ones(n_eval, dtype=bool)
        for _ in range(max_eval_steps):
            if isinstance(venv, VecNormalize):
                obs = venv.normalize_obs(obs)
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, done, _ = eval_env.step(action)
            ret += reward * alive
            alive &= ~done
            if not alive.any():
                break
        return float(ret.mean())

    steps_per_update = s["num_envs"] * s["horizon"]
    interval = s["eval_interval_updates"]
    record = {"evals": [], "rollout_s": 0.0, "eval_s": 0.0}

    class Recorder(BaseCallback):
        """Evaluates at the same points as our runner; times rollouts and evaluations."""

        reached = False

        def _eval(self) -> None:
            t = time.perf_counter()
            ret = evaluate(self.model)
            record["eval_s"] += time.perf_counter() - t
            steps = int(self.model.num_timesteps)
            record["evals"].append({"env_steps": steps, "time": time.time(), "return": ret})
            self.reached = self.reached or ret >= target
            self.last_eval = steps

        def _on_training_start(self) -> None:
            self.t_start = time.perf_counter()
            self.last_eval = -1
            if interval:
                self._eval()

        def _on_rollout_start(self) -> None:
            updates = self.model.num_timesteps // steps_per_update
            if interval and updates and updates % interval == 0:
                self._eval()
            self.t_rollout = time.perf_counter()

        def _on_rollout_end(self) -> None:
            record["rollout_s"] += time.perf_counter() - self.t_rollout

        def _on_step(self) -> bool:
            return not self.reached

        def _on_training_end(self) -> None:
            if interval and not self.reached and self.last_eval != self.model.num_timesteps:
                self._eval()  # ours evaluates after the last update too
            record["train_wall_s"] = time.perf_counter() - self.t_start - record["eval_s"]

    lr = s["lr"]
    model = PPO(
        "MlpPolicy",
        venv,
        learning_rate=(lambda p: lr * p) if s["lr_schedule"] == "linear" else lr,
        n_steps=s["horizon"],
        batch_size=s["minibatch_size"],
        n_epochs=s["update_epochs"],
        gamma=s["gamma"],
        gae_lambda=s["gae_lambda"],
        clip_range=s["clip_range"],
        normalize_advantage=s["normalize_advantages"],
        ent_coef=s["entropy_coef"],
        vf_coef=s["value_loss_coef"] / 2,  # SB3: MSE; ours: 0.5 * squared error
        max_grad_norm=s["max_grad_norm"] or 1e9,
        policy_kwargs={
            "net_arch": {"pi": s["hidden_sizes"], "vf": s["hidden_sizes"]},
            "activation_fn": {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[s["activation"]],
            "log_std_init": s["log_std_init"],
            "optimizer_kwargs": {"eps": s["adam_eps"]},
        },
        seed=seed,
        device="cpu",
        verbose=0,
    )
    budget = max(1, job["steps"] // steps_per_update) * steps_per_update
    model.learn(budget, callback=Recorder())
    record["env_steps"] = int(model.num_timesteps)
    Path(out).write_text(json.dumps(record))


# -- report ----------------------------------------------------------------------------------
def _timed_run(cmd: list[str], log: Path, args) -> tuple[float, subprocess.CompletedProcess, dict]:
    """Run ``cmd`` to completion; its start time, result, and what the host saw meanwhile
    (wall and CPU seconds of the process tree, load averages: the machine may be shared)."""
    load0 = os.getloadavg()[0]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=_child_env(args), stdout=f, stderr=f)
    wall = time.time() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime
    host = {"process_wall_s": wall, "process_cpu_s": cpu}
    host["loadavg_1min_before_after"] = [load0, os.getloadavg()[0]]
    return t0, proc, host


def _summary(side, seed, env_steps, train_wall, rollout_s, host, evals, target) -> dict:
    hit = next((e for e in evals if e["return"] >= target), None)
    return {
        "side": side,
        "seed": seed,
        "env_steps": env_steps,
        "env_steps_per_s": env_steps / train_wall,
        "rollout_env_steps_per_s": env_steps / rollout_s,
        "train_wall_s": train_wall,
        **host,
        "time_to_target_s": hit["time_s"] if hit else None,
        "steps_to_target": hit["env_steps"] if hit else None,
        "best_eval_return": max((e["return"] for e in evals), default=None),
        "evals": evals,
    }


def _median(values: list) -> float | None:
    """Median with None (target not reached) as +inf; None if the median is not reached."""
    xs = sorted(float("inf") if v is None else v for v in values)
    m = statistics.median(xs) if xs else float("inf")
    return None if m == float("inf") else m


def _child_env(args) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="CartPole-v1", choices=sorted(DEFAULTS))
    p.add_argument("--config", help="our base config (default: by --env)")
    p.add_argument("--steps", type=int, help="env step budget (default: the config's)")
    p.add_argument("--target", type=float, help="eval return to reach (default: by --env)")
    p.add_argument("--repeats", type=int, default=1, help="runs per side, seeds seed+i")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--placement", choices=["colocated", "config"], default="colocated")
    p.add_argument("--threads", type=int, default=1, help="torch/OMP threads of each process")
    p.add_argument("--only", choices=["ours", "sb3"], help="run one side only (debugging)")
    p.add_argument("--workdir", help="where runs write (default: a temporary directory)")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--sb3-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.sb3_worker:
        sb3_worker(json.loads(args.sb3_worker), args.out)
        return 0
    base, target = DEFAULTS[args.env]
    args.config = args.config or base
    args.target = target if args.target is None else args.target
    s = load_settings(args.config)
    if s["env_id"] != args.env:
        raise SystemExit(f"--config {args.config} trains {s['env_id']}, not {args.env}")
    if args.steps is None:
        from rlinf.config import load_config

        args.steps = load_config(args.config, detected_accelerators=0).runner.max_steps * (
            s["num_envs"] * s["horizon"]
        )
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="embodied_vs_sb3_"))
    workdir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {"ours": [], "sb3": []}
    sides = [args.only] if args.only else ["ours", "sb3"]
    for i in range(args.repeats):
        seed = args.seed + i
        for side in sides if i % 2 == 0 else sides[::-1]:  # alternate who goes first
            fn = run_ours if side == "ours" else run_sb3
            r = fn(s, args, seed, workdir)
            runs[side].append(r)
            print(
                f"{side} seed={seed}: {r['env_steps_per_s']:.0f} env steps/s, "
                f"time to target {r['time_to_target_s']}",
                file=sys.stderr,
            )
    result = {
        "env": args.env,
        "target_return": args.target,
        "step_budget": args.steps,
        "placement_ours": args.placement,
        "threads_per_process": args.threads,
        "cpu_count": os.cpu_count(),
        "settings": s,
    }
    for side in sides:
        rs = runs[side]
        result[side] = {
            "env_steps_per_s": statistics.median(r["env_steps_per_s"] for r in rs),
            "rollout_env_steps_per_s": statistics.median(r["rollout_env_steps_per_s"] for r in rs),
            "time_to_target_s": _median([r["time_to_target_s"] for r in rs]),
            "steps_to_target": _median([r["steps_to_target"] for r in rs]),
            "runs": rs,
        }
    if len(sides) == 2:
        o, b = result["ours"], result["sb3"]
        result["ratio_env_steps_per_s"] = o["env_steps_per_s"] / b["env_steps_per_s"]
        result["ratio_rollout_env_steps_per_s"] = (
            o["rollout_env_steps_per_s"] / b["rollout_env_steps_per_s"]
        )
        ot, bt = o["time_to_target_s"], b["time_to_target_s"]
        result["time_to_target_no_worse"] = ot is not None and (bt is None or ot <= bt)
        result["throughput_at_least_1_5x"] = result["ratio_env_steps_per_s"] >= 1.5
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
