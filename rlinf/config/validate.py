"""Whole-config validation: each section on its own, then facts that span sections.

Pure: reads the config, records problems in an Issues list, changes nothing.
"""

from __future__ import annotations

from rlinf.config.errors import Issues
from rlinf.config.root import RLinfConfig

# Roles each task type needs placed; optional roles it can use.
REQUIRED_ROLES = {
    "check": (),
    "embodied": ("actor", "rollout", "env"),
    "reasoning": ("actor", "rollout"),
    "sft": ("actor",),
}


def _positive(
    issues: Issues, path: str, value: float | int | None, allow_zero: bool = False
) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        issues.add(path, f"must be {'0 or more' if allow_zero else 'positive'}, got {value}")


def validate_sections(cfg: RLinfConfig, issues: Issues) -> None:
    r, a, act, ro, d = cfg.runner, cfg.algorithm, cfg.actor, cfg.rollout, cfg.data
    if r.max_steps == 0 or r.max_steps < -1:
        issues.add(
            "runner.max_steps", f"must be positive or -1 (until max_epochs), got {r.max_steps}"
        )
    _positive(issues, "runner.max_epochs", r.max_epochs)
    _positive(issues, "runner.val_check_interval", r.val_check_interval, allow_zero=True)
    _positive(issues, "runner.save_interval", r.save_interval, allow_zero=True)
    _positive(issues, "runner.keep_checkpoints", r.keep_checkpoints, allow_zero=True)
    _positive(issues, "runner.weight_sync_interval", r.weight_sync_interval)
    _positive(issues, "runner.max_time_s", r.max_time_s)
    if not r.logger.experiment_name or "/" in r.logger.experiment_name:
        issues.add("runner.logger.experiment_name", "must be a non-empty name without '/'")
    _positive(issues, "cluster.timeout_s", cfg.cluster.timeout_s)
    _positive(issues, "algorithm.gamma", a.gamma, allow_zero=True)
    if a.gamma > 1:
        issues.add("algorithm.gamma", f"must be in [0, 1], got {a.gamma}")
    if not 0 <= a.gae_lambda <= 1:
        issues.add("algorithm.gae_lambda", f"must be in [0, 1], got {a.gae_lambda}")
    _positive(issues, "algorithm.group_size", a.group_size)
    _positive(issues, "algorithm.update_epoch", a.update_epoch)
    _positive(issues, "algorithm.clip_ratio_low", a.clip_ratio_low, allow_zero=True)
    _positive(issues, "algorithm.clip_ratio_high", a.clip_ratio_high, allow_zero=True)
    if a.clip_ratio_c is not None and a.clip_ratio_c <= 1:
        issues.add(
            "algorithm.clip_ratio_c",
            f"dual clip needs a value > 1 (e.g. 3.0), got {a.clip_ratio_c}",
        )
    _positive(issues, "algorithm.value_clip", a.value_clip)
    _positive(issues, "algorithm.huber_delta", a.huber_delta)
    _positive(issues, "algorithm.target_kl", a.target_kl)
    _positive(issues, "algorithm.kl_beta", a.kl_beta, allow_zero=True)
    if a.adv_type in ("grpo", "rloo") and a.group_size < 2:
        issues.add(
            "algorithm.group_size",
            f"adv_type {a.adv_type} compares samples in a group; set group_size >= 2",
        )
    if a.adv_type == "gae" and a.loss_type != "actor_critic":
        issues.add(
            "algorithm.loss_type", "adv_type gae needs a value head: use loss_type actor_critic"
        )
    _positive(issues, "algorithm.length_params.max_new_token", a.length_params.max_new_token)
    _positive(
        issues, "algorithm.sampling_params.temperature_train", a.sampling_params.temperature_train
    )
    if not 0 < a.sampling_params.top_p <= 1:
        issues.add(
            "algorithm.sampling_params.top_p", f"must be in (0, 1], got {a.sampling_params.top_p}"
        )
    _positive(issues, "actor.global_batch_size", act.global_batch_size)
    _positive(issues, "actor.micro_batch_size", act.micro_batch_size)
    if (
        act.global_batch_size
        and act.micro_batch_size
        and act.micro_batch_size > act.global_batch_size
    ):
        issues.add(
            "actor.micro_batch_size",
            f"{act.micro_batch_size} is larger than actor.global_batch_size {act.global_batch_size}",
        )
    _positive(issues, "actor.optim.lr", act.optim.lr)
    _positive(issues, "actor.optim.clip_grad", act.optim.clip_grad)
    if not act.model.hidden_dims or any(h <= 0 for h in act.model.hidden_dims):
        issues.add(
            "actor.model.hidden_dims", f"needs positive layer widths, got {act.model.hidden_dims}"
        )
    if act.training_backend == "megatron":
        issues.add("actor.training_backend", "megatron is not available yet; use fsdp")
    _positive(issues, "rollout.pipeline_stage_num", ro.pipeline_stage_num)
    if not 0 < ro.gpu_memory_utilization <= 1:
        issues.add(
            "rollout.gpu_memory_utilization", f"must be in (0, 1], got {ro.gpu_memory_utilization}"
        )
    _positive(issues, "rollout.weight_sync.bucket_mb", ro.weight_sync.bucket_mb)
    _positive(issues, "rollout.max_num_seqs", ro.max_num_seqs)
    for name, split in (("train", cfg.env.train), ("eval", cfg.env.eval)):
        if split is None:
            continue
        p = f"env.{name}"
        _positive(issues, f"{p}.total_num_envs", split.total_num_envs)
        _positive(issues, f"{p}.max_steps_per_rollout_epoch", split.max_steps_per_rollout_epoch)
        _positive(issues, f"{p}.max_episode_steps", split.max_episode_steps)
        _positive(issues, f"{p}.group_size", split.group_size)
        _positive(issues, f"{p}.num_episodes", split.num_episodes)
        if split.total_num_envs % max(split.group_size, 1):
            issues.add(
                f"{p}.total_num_envs",
                f"{split.total_num_envs} is not a multiple of group_size {split.group_size}",
            )
    _positive(issues, "data.max_prompt_length", d.max_prompt_length)
    _positive(issues, "data.rollout_batch_size", d.rollout_batch_size)
    _positive(issues, "reward.timeout_s", cfg.reward.timeout_s)
    _positive(issues, "reward.num_workers", cfg.reward.num_workers)


def validate_cross(
    cfg: RLinfConfig, issues: Issues, detected_accelerators: int | None = None
) -> None:
    from rlinf.dist.placement import resolve_into

    plan = resolve_into(cfg.cluster, issues, detected_accelerators)
    task = cfg.runner.task_type
    if plan is not None:
        for role in REQUIRED_ROLES[task]:
            if role not in plan.roles:
                issues.add(
                    "cluster.component_placement",
                    f"runner.task_type {task} needs role '{role}' placed, e.g. {role}: all",
                )
    if task == "embodied" and plan is not None and "env" in plan.roles:
        n_env = plan.role_size("env")
        for name, split in (("train", cfg.env.train), ("eval", cfg.env.eval)):
            if split is None:
                continue
            if split.total_num_envs % n_env:
                issues.add(
                    f"env.{name}.total_num_envs",
                    f"{split.total_num_envs} envs cannot be split evenly over {n_env} env ranks; "
                    f"use a multiple of {n_env}",
                )
            per_rank = split.total_num_envs // max(n_env, 1)
            if name == "train" and per_rank % cfg.rollout.pipeline_stage_num:
                issues.add(
                    "rollout.pipeline_stage_num",
                    f"{per_rank} envs per env rank cannot be split into {cfg.rollout.pipeline_stage_num} stages",
                )
        if (
            cfg.algorithm.adv_type == "grpo"
            and cfg.env.train.group_size != cfg.algorithm.group_size
        ):
            issues.add(
                "env.train.group_size",
                f"must equal algorithm.group_size ({cfg.algorithm.group_size}) for grpo",
            )
    if task in ("reasoning", "sft"):
        if cfg.actor.model.model_type != "causal_lm":
            issues.add(
                "actor.model.model_type",
                f"runner.task_type {task} trains a language model: use causal_lm",
            )
        if not cfg.actor.model.model_path:
            issues.add(
                "actor.model.model_path",
                "is required: the local Hugging Face directory of the model (config.json, weights, tokenizer)",
                run_only=True,
            )
        if not cfg.data.train_data_paths and not cfg.data.synthetic.enable:
            issues.add(
                "data.train_data_paths",
                "is required: jsonl or parquet files with prompts",
                run_only=True,
            )
    n_samples = cfg.data.rollout_batch_size * cfg.algorithm.group_size
    if task == "reasoning" and n_samples % cfg.actor.global_batch_size:
        issues.add(
            "actor.global_batch_size",
            f"{cfg.actor.global_batch_size} must divide data.rollout_batch_size x "
            f"algorithm.group_size = {n_samples}",
        )


def validate_config(
    cfg: RLinfConfig, issues: Issues, detected_accelerators: int | None = None
) -> None:
    validate_sections(cfg, issues)
    validate_cross(cfg, issues, detected_accelerators)
