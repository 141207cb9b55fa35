"""`runner.task_type: embodied` — PPO / GRPO on simulators, for every placement.

One loop, run by every rank; each rank takes the branches of its roles:

    env ranks      step simulators, stage by stage, and send observations to rollout ranks
    rollout ranks  answer with actions, record the trajectory, compute advantages
    actor ranks    update the policy with FSDP2; weights then go to the rollout ranks

Colocated roles (same rank) hand batches over in memory; disaggregated roles use channels;
hybrid placements mix both. Nothing here depends on which: the placement decides.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace

import torch
import torch.distributed as dist

from rlinf.dist.batch import TensorBatch
from rlinf.dist.channel import Channel, wait_all
from rlinf.dist.weight_sync import WeightSync, named_shapes
from rlinf.runners.base import RunContext
from rlinf.runners.common import Stats, add_stat, control_vote, gather_metrics, seed_everything
from rlinf.train import checkpoint as ckpt
from rlinf.utils.dtypes import DTYPES
from rlinf.utils.metrics import MetricLogger

log = logging.getLogger(__name__)


def _spaces(ctx: RunContext, env_worker):
    """Observation/action spaces, broadcast from the first env rank to every rank."""
    obj = [None]
    src = ctx.topo.ranks("env")[0]
    if ctx.topo.rank == src:
        obj[0] = (env_worker.observation_space, env_worker.action_space)
    dist.broadcast_object_list(obj, src=src)
    return obj[0]


def _build_policy(cfg, obs_space, act_space):
    from rlinf.models.actor_critic import build_actor_critic

    m = cfg.actor.model
    return build_actor_critic(
        m.model_type,
        obs_space,
        act_space,
        hidden_sizes=m.hidden_dims,
        activation=m.activation,
        shared_trunk=m.shared_trunk,
        log_std_init=m.log_std_init,
        squash=m.tanh_squash,
    )


class EmbodiedRunner:
    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        cfg, topo = ctx.cfg, ctx.topo
        self.cfg, self.topo = cfg, topo
        seed_everything(cfg.runner.seed * 1000 + topo.rank)
        self.T = cfg.env.train.max_steps_per_rollout_epoch
        self.S = cfg.rollout.pipeline_stage_num
        self.eval_split = cfg.env.eval or replace(cfg.env.train, auto_reset=False)
        self.env = self.rollout = self.actor = None
        if topo.has("env"):
            from rlinf.envs.worker import EnvWorker

            self.env = EnvWorker(
                cfg.env.train,
                self.eval_split,
                topo.role_rank("env"),
                topo.role_size("env"),
                self.S,
                cfg.algorithm.gamma,
            )
        obs_space, act_space = _spaces(ctx, self.env)
        if topo.has("rollout"):
            from rlinf.rollout.embodied import EmbodiedRollout

            self.rollout = EmbodiedRollout(
                _build_policy(cfg, obs_space, act_space), topo.device, cfg.algorithm
            )
        total = cfg.env.train.total_num_envs * self.T
        if total % cfg.actor.global_batch_size:
            raise ValueError(
                f"actor.global_batch_size {cfg.actor.global_batch_size} must divide the samples per step "
                f"(env.train.total_num_envs x max_steps_per_rollout_epoch = {total})"
            )
        self.max_steps = cfg.runner.max_steps
        if topo.has("actor"):
            from rlinf.train.embodied_actor import EmbodiedActor

            torch.manual_seed(cfg.runner.seed)  # same initial weights on every actor rank
            self.actor = EmbodiedActor(
                _build_policy(cfg, obs_space, act_space),
                cfg,
                topo.group("actor"),
                topo.device,
                num_minibatches=total // cfg.actor.global_batch_size,
                total_updates=self.max_steps,
                seed=cfg.runner.seed * 7 + topo.role_rank("actor"),
            )
            seed_everything(cfg.runner.seed * 1000 + topo.rank)
        self.obs_ch = Channel(topo.ranks("env"), topo.ranks("rollout"))
        self.act_ch = self.obs_ch.reverse()
        self.traj_ch = Channel(topo.ranks("rollout"), topo.ranks("actor"))
        wdtype = cfg.rollout.weight_sync.dtype or cfg.rollout.model.precision
        self.sync = WeightSync(
            topo.ranks("actor"),
            topo.ranks("rollout"),
            [g for _, g in topo.extra_groups("weight_sync")],
            bucket_mb=cfg.rollout.weight_sync.bucket_mb,
            dtype=DTYPES[wdtype] if wdtype else None,
        )
        self.step = 0
        self.cached_obs: list[TensorBatch | None] = [None] * self.S  # rollout: obs to act on next
        self._parts: list[list[int] | None] = [
            None
        ] * self.S  # rollout: rows per env peer, per stage
        self.need_reset = True  # env: send first observations before the next horizon
        self.ckpt = ckpt.CheckpointWriter(ctx.output_dir, cfg.runner.keep_checkpoints)

    # -- phases ---------------------------------------------------------------------------
    def sync_weights(self) -> None:
        if self.actor is not None:
            lw = self.rollout.load_weights if self.rollout is not None else None
            exp = named_shapes(self.rollout.policy) if self.rollout is not None else None
            self.sync.sync(self.actor.model, version=self.step, load_weights=lw, expected=exp)
            if self.rollout is not None:
                self.rollout.version = self.step
        elif self.rollout is not None:
            self.rollout.version = self.sync.receive(
                self.rollout.load_weights, named_shapes(self.rollout.policy)
            )

    def collect(self) -> TensorBatch | None:
        """One horizon of T steps per env; returns this rollout rank's samples (or None)."""
        env, ro, S = self.env, self.rollout, self.S
        if env is None and ro is None:
            return None
        reset_each = not self.cfg.env.train.auto_reset
        pending = []
        if env is not None and (self.need_reset or reset_each):
            pending += [
                h
                for s in range(S)
                for h in self.obs_ch.send(env.reset_message(s), async_op=True) or []
            ]
            self.need_reset = False
        if ro is not None:
            ro.begin(S)
            if reset_each or self.cached_obs[0] is None:
                self.cached_obs = [None] * S
        horizon = self.T
        t = 0
        while t <= horizon:
            for s in range(S):
                if ro is not None:
                    self._serve(t, s, last=t == horizon)
                if env is not None and t < horizon:
                    actions = TensorBatch.cat(self.act_ch.recv_parts())["env_action"]
                    # Only now: a gloo send completes once its receive is posted, and the
                    # rollout rank posts the one for another stage only after these actions
                    # have left (waiting first deadlocks with pipeline stages).
                    wait_all(pending)
                    pending = self.obs_ch.send(env.step(s, actions), async_op=True) or []
            if reset_each and t < horizon and self._all_finished():
                horizon = t + 1  # every episode has ended: take the last outcomes and stop
            t += 1
        wait_all(pending)
        return ro.finish() if ro is not None else None

    def _all_finished(self) -> bool:
        """Env and rollout ranks agree whether any env of this horizon is still running."""
        alive = torch.zeros(1, dtype=torch.int64)
        if self.env is not None:
            alive[0] = int(not self.env.all_finished())
        dist.all_reduce(alive, op=dist.ReduceOp.MAX, group=self.topo.group("rollout", "env"))
        return not int(alive)

    def _serve(self, t: int, s: int, last: bool) -> None:
        """Rollout side of step t, stage s: take the outcome of t-1, act on the obs of t."""
        ro = self.rollout
        if t == 0 and self.cached_obs[s] is not None:
            parts = self._parts[s]
            obs = self.cached_obs[s]["obs"]
        else:
            parts = self.obs_ch.recv_parts()
            msg = TensorBatch.cat(parts)
            if "reward" in msg:
                ro.record_outcome(s, msg)
            obs = msg["obs"]
            self.cached_obs[s] = TensorBatch({"obs": obs})
            self._parts[s] = [p.batch_size for p in parts]
            parts = self._parts[s]
        if last:
            ro.record_last_obs(s, obs)
            return
        out = ro.act(obs)
        ro.record_action(s, obs, out)
        reply = TensorBatch({"env_action": out.env_action.cpu()})
        self.act_ch.send_parts(reply.split(parts) if len(parts) > 1 else [reply])

    def evaluate(self) -> Stats:
        """Deterministic episodes on the eval envs, one per env; stops once all have ended."""
        env, ro = self.env, self.rollout
        if env is None and ro is None:
            return {}
        from rlinf.envs.worker import EpisodeStats

        group = self.topo.group("rollout", "env")
        steps = self.eval_split.max_episode_steps or self.T
        envs = None
        ep = EpisodeStats()
        if env is not None:
            envs, obs = env.eval_start(self.topo.role_size("env"))
            self.obs_ch.send(TensorBatch({"obs": env.eval_obs(obs)}))
        # Ranks agree every few steps whether an episode is still running (envs that have
        # finished are frozen and add nothing); a lone rank checks every step, for free.
        every = 8 if dist.get_world_size(group) > 1 else 1
        for i in range(steps):
            if ro is not None:
                parts = self.obs_ch.recv_parts()
                out = ro.act(TensorBatch.cat(parts)["obs"], deterministic=True)
                reply = TensorBatch({"env_action": out.env_action.cpu()})
                self.act_ch.send_parts(reply.split([p.batch_size for p in parts]))
            alive = torch.zeros(1, dtype=torch.int64)
            if envs is not None:
                res = envs.step(TensorBatch.cat(self.act_ch.recv_parts())["env_action"])
                ep.add(res)
                alive[0] = int(not bool(res.finished.all()))
            if (i + 1) % every == 0 or i + 1 == steps:
                if every > 1:
                    dist.all_reduce(alive, op=dist.ReduceOp.MAX, group=group)
                if not int(alive):
                    break
            if envs is not None and i + 1 < steps:
                self.obs_ch.send(TensorBatch({"obs": env.eval_obs(res.obs)}))
        return ep.metrics("eval")

    # -- checkpoint -----------------------------------------------------------------------
    def save(self) -> None:
        state = {"step": self.step, "rng": ckpt.capture_rng(), "need_reset": self.need_reset}
        if self.env is not None:
            state["env"] = self.env.state_dict()
        if self.rollout is not None:
            state["cached_obs"] = self.cached_obs
            state["parts"] = self._parts
        actor_state = None
        if self.actor is not None:
            state["actor_extra"] = self.actor.extra_state()
            actor_state = self.actor.state_dict()
        groups_ok = self.actor is not None
        self.ckpt.save(
            self.step,
            state,
            actor_state if groups_ok else None,
            self.topo.group("actor") if groups_ok else None,
        )

    def resume(self, path) -> None:
        state = ckpt.load_rank_state(path)
        if self.actor is not None:
            actor_state = self.actor.state_dict()
            ckpt.load_actor_state(path, actor_state, self.topo.group("actor"))
            self.actor.load_state_dict(actor_state)
            self.actor.load_extra_state(state["actor_extra"])
        if self.env is not None:
            self.env.load_state_dict(state["env"])
        if self.rollout is not None:
            self.cached_obs = state["cached_obs"]
            self._parts = state["parts"]
        self.need_reset = state["need_reset"]
        self.step = state["step"]
        ckpt.restore_rng(state["rng"])
        log.info("resumed from %s at step %d", path, self.step)

    # -- loop -------------------------------------------------------------------------------
    def run(self) -> int:
        cfg, r = self.cfg, self.cfg.runner
        resume = ckpt.resolve_resume_dir(r.resume_dir, self.ctx.output_dir)
        if resume is not None:
            self.resume(resume)
        elif r.resume_dir == "auto":
            log.info(
                "runner.resume_dir=auto: no checkpoint in %s, starting fresh", self.ctx.output_dir
            )
        rank0 = self.topo.rank == 0
        logger = MetricLogger(
            self.ctx.output_dir,
            r.logger.logger_backends,
            enabled=rank0,
            total_steps=self.max_steps,
            log_interval=r.log_interval,
            resume_step=self.step,
        )
        env_steps_per_step = cfg.env.train.total_num_envs * self.T
        t_start = time.monotonic()
        self.sync_weights()
        reason, early = "", False
        try:
            if self.step == 0 and r.val_check_interval and not r.only_eval:
                m = gather_metrics(self.evaluate())
                logger.log(0, m)
                early = rank0 and self._reached(m)
            if r.only_eval:
                logger.log(self.step, gather_metrics(self.evaluate()))
                return 0
            while self.step < self.max_steps:
                reason, early = control_vote(
                    self.ctx.stop.reason,
                    early,
                    r.max_time_s is not None and time.monotonic() - t_start > r.max_time_s,
                )
                if reason or early:
                    break
                stats: Stats = {}
                t0 = time.monotonic()
                samples = self.collect()
                t1 = time.monotonic()
                handles = self.traj_ch.send(samples, async_op=True) if samples is not None else None
                if self.actor is not None:
                    stats.update(self.actor.update(self.traj_ch.recv()))
                wait_all(handles)
                t2 = time.monotonic()
                self.step += 1
                if self.step % r.weight_sync_interval == 0:
                    self.sync_weights()
                t3 = time.monotonic()
                if self.env is not None:
                    stats.update(self.env.pop_stats())
                if r.val_check_interval and (
                    self.step % r.val_check_interval == 0 or self.step == self.max_steps
                ):
                    stats.update(self.evaluate())
                t4 = time.monotonic()
                for key, dt in (
                    ("rollout", t1 - t0),
                    ("train", t2 - t1),
                    ("sync", t3 - t2),
                    ("eval", t4 - t3),
                ):
                    add_stat(stats, f"time/{key}_s", dt)
                add_stat(stats, "time/step_s", t4 - t0)
                m = gather_metrics(stats)
                if rank0:
                    m["rollout/env_steps_per_s"] = env_steps_per_step / max(
                        m["time/rollout_s"], 1e-9
                    )
                    m["env/total_steps"] = float(self.step * env_steps_per_step)
                logger.log(self.step, m)
                early = rank0 and self._reached(m)
                if r.save_interval and self.step % r.save_interval == 0:
                    self.save()
            reason, early = control_vote(self.ctx.stop.reason, early, False)
            saved = bool(r.save_interval) and self.step % r.save_interval == 0
            if (reason or early or self.step == self.max_steps) and self.step > 0 and not saved:
                self.save()
        finally:
            logger.close()
            if self.env is not None:
                self.env.close()
        if reason == "requeue":
            from rlinf.dist.slurm import requeue_current_job

            if rank0:
                requeue_current_job()
        if early and rank0:
            log.info("early stop: %s reached %s", r.early_stop.metric, r.early_stop.threshold)
        return 0

    def _reached(self, m: dict[str, float]) -> bool:
        es = self.cfg.runner.early_stop
        if es.metric is None or es.metric not in m or math.isnan(m[es.metric]):
            return False
        return m[es.metric] >= es.threshold if es.mode == "max" else m[es.metric] <= es.threshold


def run(ctx: RunContext) -> int:
    return EmbodiedRunner(ctx).run()
