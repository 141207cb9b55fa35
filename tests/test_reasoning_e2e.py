"""End-to-end LLM reasoning runs on CPU under torchrun: colocated and disaggregated, export, resume."""

import pytest
from launchers import read_metrics, torchrun

SHORT = [
    "runner.max_steps=2",
    "runner.val_check_interval=2",
    "runner.save_interval=1",
    "actor.sft_warmup.steps=5",
    "data.synthetic.n_train=40",
    "data.synthetic.n_val=8",
    "data.rollout_batch_size=4",
    "algorithm.group_size=4",
    "actor.global_batch_size=8",
    "actor.micro_batch_size=8",
    "algorithm.length_params.max_new_token=6",
]


@pytest.mark.parametrize(
    "placement",
    ["{'actor,rollout': all}", "{actor: 0, rollout: 1}"],
    ids=["colocated", "disaggregated"],
)
def test_math_grpo_tiny_runs_and_exports_a_loadable_model(tmp_path, placement):
    out = tmp_path / "run"
    p = torchrun(
        2,
        "math_grpo_tiny.yaml",
        f"runner.output_dir={out}",
        f"actor.model.model_path={out}/tiny_lm",
        f"cluster.component_placement={placement}",
        *SHORT,
        timeout=400,
    )
    assert p.returncode == 0, p.stderr[-4000:]
    m = read_metrics(out)
    keys = set().union(*m)
    for k in [
        "train/reward_mean",
        "train/accuracy",
        "train/response_len_mean",
        "train/clip_frac",
        "train/entropy",
        "rollout/tokens_per_s",
        "eval/accuracy",
        "time/rollout_s",
        "time/train_s",
    ]:
        assert k in keys, (k, sorted(keys))
    assert [r["step"] for r in m if "train/reward_mean" in r] == [1, 2]
    # the exported actor is an ordinary HF directory
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "hf_model")
    tok = AutoTokenizer.from_pretrained(out / "hf_model")
    ids = tok("What is 2 + 3?", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    # resume from the newest checkpoint continues the step count
    p2 = torchrun(
        2,
        "math_grpo_tiny.yaml",
        f"runner.output_dir={out}",
        f"actor.model.model_path={out}/tiny_lm",
        f"cluster.component_placement={placement}",
        *SHORT,
        "runner.max_steps=3",
        "runner.resume_dir=auto",
        timeout=400,
    )
    assert p2.returncode == 0, p2.stderr[-4000:]
    assert "at step 2" in p2.stderr
    assert [r["step"] for r in read_metrics(out) if "train/reward_mean" in r] == [1, 2, 3]


def test_missing_model_path_is_a_clear_error(tmp_path):
    p = torchrun(
        1,
        "math_grpo_qwen1.5b.yaml",
        "cluster.accelerator_type=cpu",
        "cluster.accelerators_per_node=1",
        "data.train_data_paths=[x.jsonl]",
        timeout=120,
    )
    assert p.returncode != 0
    assert "actor.model.model_path: is required" in p.stderr


def test_sft_tiny_lowers_eval_loss_and_exports(tmp_path):
    out = tmp_path / "sft"
    p = torchrun(
        2,
        "sft_tiny.yaml",
        f"runner.output_dir={out}",
        f"actor.model.model_path={out}/tiny_lm",
        "runner.max_steps=30",
        "runner.val_check_interval=15",
        "data.synthetic.n_train=400",
        "data.synthetic.n_val=40",
        timeout=400,
    )
    assert p.returncode == 0, p.stderr[-4000:]
    losses = [r["eval/loss"] for r in read_metrics(out) if "eval/loss" in r]
    assert len(losses) == 3 and losses[-1] < 0.5 * losses[0], losses
    assert (out / "hf_model" / "model.safetensors").is_file()
