"""End-to-end embodied runs under torchrun on CPU: every placement, learning, kill and resume."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launchers import REPO, base_env, read_metrics, torchrun

REQUIRED = [
    "env/return_mean",
    "env/episode_len_mean",
    "eval/return_mean",
    "train/policy_loss",
    "train/entropy",
    "train/approx_kl",
    "train/clip_frac",
    "rollout/env_steps_per_s",
    "time/rollout_s",
    "time/train_s",
    "time/sync_s",
]


@pytest.mark.parametrize(
    ("config", "nproc"),
    [
        ("cartpole_ppo.yaml", 3),
        ("cartpole_ppo_colocated.yaml", 2),
        ("cartpole_ppo_hybrid.yaml", 2),
        ("cartpole_grpo.yaml", 3),
    ],
)
def test_every_placement_runs_logs_and_checkpoints(tmp_path, config, nproc):
    out = tmp_path / "run"
    p = torchrun(
        nproc,
        config,
        f"runner.output_dir={out}",
        "runner.max_steps=4",
        "runner.val_check_interval=2",
        "runner.save_interval=2",
        "env.eval.max_episode_steps=50",
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    rows = read_metrics(out)
    keys = set().union(*rows)
    need = REQUIRED + ([] if "grpo" in config else ["train/value_loss"])  # grpo: no critic
    assert not [k for k in need if k not in keys], sorted(keys)
    assert [r["step"] for r in rows if "train/policy_loss" in r] == [1, 2, 3, 4]
    ckpts = sorted(d.name for d in (out / "checkpoints").iterdir())
    assert ckpts == ["global_step_2", "global_step_4"]
    assert (out / "config.yaml").is_file() and (out / "tensorboard").is_dir()
    assert "| eta=" in p.stderr or "eta=" in p.stderr  # the console progress line


def test_cartpole_ppo_learns_to_the_target(tmp_path):
    out = tmp_path / "run"
    t0 = time.monotonic()
    p = torchrun(3, "cartpole_ppo.yaml", f"runner.output_dir={out}", timeout=400)
    elapsed = time.monotonic() - t0
    assert p.returncode == 0, p.stderr[-3000:]
    best = max(r.get("eval/return_mean", 0) for r in read_metrics(out))
    assert best >= 475, best
    print(f"cartpole_ppo reached eval/return_mean {best} in {elapsed:.0f}s wall")


def _launch(out: Path, *overrides: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=3",
        "-m",
        "rlinf.launch",
        "--config",
        "cartpole_ppo.yaml",
        f"runner.output_dir={out}",
        "runner.early_stop.metric=null",
        "runner.max_steps=10",
        "runner.save_interval=2",
        "runner.val_check_interval=3",
        *overrides,
    ]
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=base_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _comparable(rows: list[dict], after: int) -> dict[int, dict]:
    return {
        r["step"]: {k: v for k, v in r.items() if not k.startswith(("time", "rollout/env_steps"))}
        for r in rows
        if r["step"] > after
    }


def test_sigkill_after_second_checkpoint_then_resume_matches_uninterrupted(tmp_path):
    ref = _launch(tmp_path / "ref")
    ref_out, _ = ref.communicate(timeout=400)
    assert ref.returncode == 0, ref_out[-3000:]

    run = tmp_path / "run"
    p = _launch(run)
    second = run / "checkpoints" / "global_step_4"
    deadline = time.monotonic() + 300
    while not (second / "meta.json").exists():
        assert p.poll() is None, "run ended before its second checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    import psutil

    tree = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
    for proc in tree:  # the launcher and every rank at once, no cleanup
        proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(tree, timeout=30)
    killed_at = max(
        int(d.name.split("_")[-1]) for d in (run / "checkpoints").iterdir() if ".tmp" not in d.name
    )
    assert killed_at >= 4
    p2 = _launch(run, "runner.resume_dir=auto")
    out2, _ = p2.communicate(timeout=400)
    assert p2.returncode == 0, out2[-3000:]
    resumed = [line for line in out2.splitlines() if "resumed from" in line]
    assert resumed and resumed[0].endswith(f"global_step_{killed_at} at step {killed_at}"), resumed
    want = _comparable(read_metrics(tmp_path / "ref"), killed_at)
    got = _comparable(read_metrics(run), killed_at)  # later lines (the resumed run's) win
    assert set(got) == set(want) == set(range(killed_at + 1, 11))
    for step in want:
        assert got[step] == want[step], step
